"""User-facing errors: one line that names the problem and the fix; the CLI prints it without a traceback."""


class MegarankError(Exception):
    """Bad input from the user (config, paths, data). str(err) is shown as-is, so make it one actionable line."""
