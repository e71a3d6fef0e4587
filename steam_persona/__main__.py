"""``python -m steam_persona`` is ``steam-train``."""

from steam_persona.cli import main

main(prog_name="steam-train")
