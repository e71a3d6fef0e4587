"""Data package: the Dify plugins' sources, read through :func:`steam_persona.resources.shipped`."""
