"""The commands' help layout: argparse's defaults, shown only where they say something."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help, except where X is None (the option has no
    default of its own), for on/off flags (off unless given) and where the help already names
    its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        flag = isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction)
        if action.default is None or flag or "default" in text.lower():
            return text
        return super()._get_help_string(action)
