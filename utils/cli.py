"""What every command-line script of the project shares in its `--help`."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written (scripts pass `description=__doc__`), and the default of each flag that takes
    a value after its help.

    Not shown: a default of None (the help says what happens without the flag), one the help already states, and
    the defaults of on/off switches (`store_true` is off unless given; `--x` / `--no_x` pairs say theirs).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.nargs == 0 or action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)
