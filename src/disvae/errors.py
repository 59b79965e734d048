"""Errors that mean "the user asked for something we cannot do" (exit code 2 in the CLI)."""

from __future__ import annotations

from collections.abc import Iterable


class UserError(Exception):
    """Bad input: a bad config value, missing or corrupt data, an unusable run directory.

    The message is one line saying what is wrong and what to do. The CLI prints it without a
    traceback and exits with code 2.
    """


class DataError(UserError):
    """A dataset file is missing, has the wrong format, or is corrupt."""


def closest(word: object, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to a mistyped ``word``, or None. A dotted choice
    (``train.lr``) also matches on its last part (``lr`` for ``lrr``)."""
    import difflib

    if not isinstance(word, str):
        return None
    choices = list(choices)
    last = {c.rpartition(".")[2]: c for c in choices}
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6) or [
        last[m] for m in difflib.get_close_matches(word.rpartition(".")[2], last, n=1, cutoff=0.6)
    ]
    return match[0] if match else None


def did_you_mean(word: object, choices: Iterable[str], prefix: str = "") -> str:
    """`` (did you mean X?)`` for the closest of ``choices`` to a mistyped ``word``, or '': the
    one suggestion every unknown name (key, preset, loss, dataset, architecture, metric) gets."""
    match = closest(word, choices)
    return f" (did you mean {prefix + '.' if prefix else ''}{match}?)" if match else ""
