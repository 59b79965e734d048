"""Errors that mean "the user asked for something we cannot do" (exit code 2 in the CLI)."""


class UserError(Exception):
    """Bad input: a bad config value, missing or corrupt data, an unusable run directory.

    The message is one line saying what is wrong and what to do. The CLI prints it without a
    traceback and exits with code 2.
    """


class DataError(UserError):
    """A dataset file is missing, has the wrong format, or is corrupt."""
