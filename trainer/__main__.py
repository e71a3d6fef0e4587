"""``python -m trainer`` is ``steam-train``."""

from trainer.cli import main

main()
