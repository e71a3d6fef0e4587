"""Data package: the demo data set, example YAML configs and the blocklist, read through :func:`steam_persona.resources.shipped`."""
