"""Pieces every stage shares (``steam_persona.common``): the settings groups and the config glue
(:mod:`.arguments`, :mod:`.config`), errors, the console, atomic file writes, the persona, the run
record, where models come from (:mod:`.hub`) and the dataset registry (``dataset_info.json``). It
imports nothing from the stages."""
