"""User-facing errors: one line that names the problem and the fix; the CLI prints it without a traceback."""


class MegarankError(Exception):
    """Bad input from the user (config, paths, data). str(err) is shown as-is, so make it one actionable line."""


class CollectiveError(MegarankError):
    """A MegarankError every rank raises at the same point, having agreed on it collectively (a diverged step,
    failed set-up checks): rank 0 alone reports it, and no rank is left waiting for another."""
