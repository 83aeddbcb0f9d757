"""User-facing errors: one line that names the problem and the fix; the CLI prints it without a traceback."""

import os
import sys


class MegarankError(Exception):
    """Bad input from the user (config, paths, data). str(err) is shown as-is, so make it one actionable line."""


class CollectiveError(MegarankError):
    """A MegarankError every rank raises at the same point, having agreed on it collectively (a diverged step,
    failed set-up checks): rank 0 alone reports it, and no rank is left waiting for another."""


def stdout_closed() -> int:
    """What a CLI returns when its reader went away (`megarank-sweep list | head`): no traceback, and stdout
    pointed at /dev/null so the interpreter's final flush cannot raise again (Python's documented recipe,
    library/signal.html, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, as a shell reports a command a closed pipe killed
