"""argparse value types shared by the `fastvits` subcommands."""

from __future__ import annotations

import argparse
import json
from typing import Any


def json_object(text: str) -> dict[str, Any]:
    """A JSON object given on the command line, e.g. constructor kwargs `'{"dim": 32}'`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}); write e.g. '{{\"dim\": 32}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} must be a JSON object, e.g. '{{\"dim\": 32}}'")
    return value


def _number(kind: type, text: str, minimum: float, what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, threads, rounds)."""
    return _number(int, text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0 (warm-up calls)."""
    return _number(int, text, 0, "an integer >= 0")


def non_negative_float(text: str) -> float:
    """A number >= 0 (seconds; 0: as short as possible)."""
    return _number(float, text, 0, "a number >= 0")
