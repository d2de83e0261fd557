"""What a config field allows: small rule objects read by validation, the CLI and the docs.

    Integer(1).problem(0, config)          # 'must be an integer >= 1'
    Number(0, 1, low_open=True).describe() # 'a finite number in (0, 1]'

A rule says in words what it allows (``describe``) and what is wrong with a
value (``problem``: None when fine). ``config.py`` attaches one to each field.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INT_LIMIT = 2**63   # every integer field fits a signed 64-bit integer (torch, numpy)


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line naming the field."""


class Rule:
    """What a field allows. ``problem`` says what is wrong with a value (None: fine)."""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        """What is allowed, for messages and docs: 'one of a, b', 'an integer >= 1', ..."""
        raise NotImplementedError

    def problem(self, value: Any, config: Any) -> str | None:
        return None if self.accepts(value) else "must be " + self.describe()


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bound(x: float) -> str:
    return f"2**{x.bit_length() - 1}" if is_int(x) and x >= 2**20 and x & (x - 1) == 0 else f"{x:g}"


@dataclass(frozen=True)
class Choice(Rule):
    options: tuple[str, ...]

    def accepts(self, value):
        return isinstance(value, str) and value in self.options

    def describe(self):
        return "one of " + ", ".join(self.options)


@dataclass(frozen=True)
class Integer(Rule):
    """An int (not a bool) with low <= value < high (high None: below INT_LIMIT)."""

    low: int
    high: int | None = None

    def accepts(self, value):
        return is_int(value) and self.low <= value < (self.high or INT_LIMIT)

    def describe(self):
        return f"an integer >= {self.low}" if self.high is None else f"an integer in [{self.low}, {_bound(self.high)})"

    def problem(self, value, config):
        if self.high is None and is_int(value) and value >= INT_LIMIT:
            return f"must be {self.describe()} and below 2**63"
        return super().problem(value, config)


@dataclass(frozen=True)
class Number(Rule):
    """An int or float (not a bool, not NaN) within bounds; ``finite``: no infinities."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    finite: bool = True

    def accepts(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        try:
            v = float(value)
        except OverflowError:   # an int beyond float range
            return False
        if math.isnan(v) or (self.finite and math.isinf(v)):
            return False
        low_ok = self.low is None or (v > self.low if self.low_open else v >= self.low)
        high_ok = self.high is None or (v < self.high if self.high_open else v <= self.high)
        return low_ok and high_ok

    def describe(self):
        kind = "a finite number" if self.finite else "a number"
        if self.low is not None and self.high is not None:
            return (f"{kind} in {'(' if self.low_open else '['}{_bound(self.low)}, "
                    f"{_bound(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_bound(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {_bound(self.high)}"
        return kind


@dataclass(frozen=True)
class Optional(Rule):
    rule: Rule

    def accepts(self, value):
        return value is None or self.rule.accepts(value)

    def describe(self):
        return "None or " + self.rule.describe()

    def problem(self, value, config):
        inner = None if value is None else self.rule.problem(value, config)
        return None if inner is None else inner.replace("must be ", "must be None or ", 1)


@dataclass(frozen=True)
class Bool(Rule):
    def accepts(self, value):
        return isinstance(value, bool)

    def describe(self):
        return "True or False"


@dataclass(frozen=True)
class String(Rule):
    def accepts(self, value):
        return isinstance(value, str) and value != ""

    def describe(self):
        return "a non-empty string"


@dataclass(frozen=True)
class Device(Rule):
    def accepts(self, value):
        return isinstance(value, str) and re.fullmatch(r"cpu|cuda(:\d+)?", value) is not None

    def describe(self):
        return "'cpu', 'cuda' or 'cuda:<index>'"


@dataclass(frozen=True)
class OutDir(String):
    """A folder that exists or can be created: checked on disk, nothing is created."""

    def describe(self):
        return "a path to a writable folder that exists or can be created"

    def problem(self, value, config):
        if not self.accepts(value):
            return "must be " + self.describe()
        path = Path(value)
        try:
            if path.exists():
                if not path.is_dir():
                    return "it exists and is not a directory"
                return None if os.access(path, os.W_OK | os.X_OK) else "it is a folder you cannot write to"
            for parent in path.absolute().parents:   # the first existing ancestor decides
                if parent.exists():
                    if not parent.is_dir():
                        return f"cannot be created: {str(parent)!r} is a file, not a directory"
                    if not os.access(parent, os.W_OK | os.X_OK):
                        return f"cannot be created: {str(parent)!r} is not writable"
                    return None
        except OSError as exc:
            return f"cannot be checked: {exc.strerror or exc}"
        return None
