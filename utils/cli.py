"""What the command-line scripts share: their `--help` format, and argument types for numbers that must be
positive, which fail at parsing, naming the flag, instead of deep inside DeepSpeed or a data loader."""

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


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value
