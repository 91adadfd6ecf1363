"""argparse `type=` callables of the commands: a number with a lower bound, or argparse's one-line error.

The commands' options that are config keys (`key=value`, `--image-size`, ...) are checked by the config
loaders instead; these are for the options that are not (nodes, time limits, poll intervals).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def at_least(kind: type, minimum: float) -> Callable[[str], int | float]:
    """An argparse type: `text` read as `kind` (int or float), refused below `minimum` (`expected ... >= minimum`)."""
    what = "an integer" if kind is int else "a number"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what} >= {minimum}, got {value}")
        return value

    parse.__name__ = f"{kind.__name__} >= {minimum}"  # argparse names the type in its own messages
    return parse


positive_int = at_least(int, 1)
nonnegative_int = at_least(int, 0)
nonnegative_float = at_least(float, 0.0)
