"""Value types and checks shared by the settings models: the bridge's (`settings.py`) and each identity
provider's (under `providers/`)."""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import Field
from pydantic_settings import NoDecode

PositiveSeconds = Annotated[int, Field(gt=0, le=86400 * 30)]
DAY = 86400
SessionSeconds = Annotated[int, Field(gt=0, le=DAY * 400)]
# Lists read from one environment variable, comma-separated (a JSON list is accepted too).
CommaList = Annotated[tuple[str, ...], NoDecode]


def split_list(value: object) -> object:
    """A `CommaList` as it comes from the environment: "a,b" or '["a", "b"]'."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return tuple(json.loads(text))
        return tuple(part.strip() for part in text.split(",") if part.strip())
    return value


def check_rate(value: str) -> str:
    """A rate limit like '60/minute' (empty: off)."""
    if value:
        from limits import parse  # noqa: PLC0415 - validation only

        try:
            parse(value)
        except ValueError as exc:
            raise ValueError(f"not a rate limit like '60/minute': {value!r}") from exc
    return value
