"""The one exception type that archbench raises for problems a user can fix.

The CLI prints an ``ArchbenchError`` as a single line on stderr and exits with
``EXIT_USAGE``; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_CELLS_FAILED = 3
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C), as shells report it
EXIT_TERMINATED = 143  # SIGTERM


class ArchbenchError(Exception):
    """A problem with the user's input, shown as one line without a traceback."""


class UnknownVariantError(ArchbenchError, KeyError):
    """A variant, alias, family or pattern that matches nothing in the registry."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class SpecError(ArchbenchError):
    """A variant spec file that is malformed: names the file, the variant and the key."""
