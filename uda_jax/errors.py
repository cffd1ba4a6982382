"""The one exception type for user mistakes, and the hint its messages share."""

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake by the user (config, paths, data).

    The CLI prints it as one line on stderr and exits with code 2.
    """


def did_you_mean(name: str, valid: Iterable[str], prefix: str = "") -> str:
    """`` (did you mean 'PREFIXclosest'?)`` for the valid name closest to ``name``, else ``""``."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""
