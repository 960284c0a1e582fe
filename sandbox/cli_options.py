"""The `key=value,...` options of the sandboxes' command lines (`--segment`, `--audience`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def typed_options(text: str, what: str, types: dict[str, Callable[[str], object]]) -> dict:
    """`seed=7,name=VIP` as keyword arguments, each value through its type in `types`; a pair
    without `=` or a key not in `types` is an `ArgumentTypeError` naming it."""
    kwargs: dict = {}
    for item in text.split(",") if text else ():
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
        if key not in types:
            raise argparse.ArgumentTypeError(f"unknown {what} option {key!r}")
        kwargs[key] = types[key](value)
    return kwargs


def flag(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")
