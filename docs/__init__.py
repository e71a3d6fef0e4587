"""Data package: the longer write-ups (Markdown), shipped so that what a command prints can name a file an
installed wheel has (:func:`steam_persona.resources.doc`)."""
