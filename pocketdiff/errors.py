"""The one exception type for bad user input.

Library code raises :class:`PocketdiffError` for anything the user can fix (a missing folder, a bad
value, a corrupt file). The CLI prints its message on one line and exits with status 2; any other
exception is a bug and keeps its traceback. This module imports nothing, so the torch-free runtime
can use it.
"""


class PocketdiffError(Exception):
    """A problem with the user's input. The message names the bad value and what is allowed."""


def choice_error(what: str, value: object, allowed) -> PocketdiffError:
    """Build the standard 'unknown X' error: names the bad value and lists the allowed ones."""
    return PocketdiffError(f"unknown {what} {value!r}; allowed: {', '.join(map(str, allowed))}")
