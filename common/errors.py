"""The one user-error type of steam-persona.

Every stage raises :class:`UserError` for problems the user can fix (a missing file, a bad record,
an unknown flag value). The CLI edge turns it into exit code 2 and a single line on stderr, with no
traceback. Library code never calls ``sys.exit``.
"""

from __future__ import annotations

import click


class UserError(click.ClickException):
    """A problem with the user's input or environment that the user can fix.

    The message must be one line naming the file (and record, when there is one) and the fix,
    e.g. ``"data/x.json: record 12: 'output' is empty; fill it or drop the record"``.

    Raised anywhere below the CLI; click prints ``Error: <message>`` and exits with code 2.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split("\n")))
