"""The review data pipeline (``steam_persona.reviews``): ``collect`` (Steam's review API), ``prepare``
(readers for the files users have, the cleaning rules, the SFT set and its report). It imports only
:mod:`steam_persona.common`; training reads what it writes through the dataset registry."""
