"""Bounded number types for options: a whole number or a finite number within [min, max] (click parameter types the commands and the simulator share)."""

from __future__ import annotations

import math
import re
from typing import Any

import click

DAY = 86_400.0


class FiniteFloat(click.FloatRange):
    """A number within [min, max] that is a real number: `nan`, `inf` and `1e999` are refused."""

    def __init__(self, min: float, max: float, *, min_open: bool = False) -> None:
        super().__init__(min, max, min_open=min_open)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("a number is needed, not an empty value", param, ctx)
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


class BoundedInt(click.IntRange):
    """A whole number within [min, max], written in decimal digits only (no `1_000`, no `0x10`)."""

    def __init__(self, min: int, max: int) -> None:
        super().__init__(min, max)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not re.fullmatch(r"\s*[+-]?\d{1,30}\s*", value):
            self.fail(f"{value[:40]!r} is not a whole number", param, ctx)
        return super().convert(value, param, ctx)
