"""Reading the claims of a JWT someone else signed, the same way wherever the bridge reads one.

Python's `json` accepts `NaN`, `Infinity` and `-Infinity`, which RFC 8259 JSON does not have, and a
NaN compares false with everything: a DPoP proof with `"iat": NaN` passed the freshness window and
never expired. Two rules, applied to DPoP proofs (`dpop.py`) and to the realm's access
tokens (`bearer.py`):
- the JSON of a JWT part is parsed strictly: those three words are refused at parsing (`loads`, and
  `StrictJSONDecoder` for joserfc, which parses the claims itself);
- a NumericDate claim (RFC 7519 §2: `exp`, `nbf`, `iat`) is a finite JSON number. Non-integer values
  are allowed, as the RFC allows them; booleans (Python's `True` is an `int`), strings, and numbers too
  large for a float (`1e400` parses as infinity without any of the three words; an integer of 400
  digits does not fit one) are not.

Only the standard library is imported.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _refuse_constant(name: str) -> Any:  # noqa: ANN401 - json's parse_constant hook
    raise ValueError(f"{name} is not JSON (RFC 8259)")


class StrictJSONDecoder(json.JSONDecoder):
    """`json.JSONDecoder` refusing NaN and the infinities (for joserfc's `decoder_cls`)."""

    def __init__(self, **kwargs: Any) -> None:  # noqa: ANN401 - json passes its own keywords through
        super().__init__(**{**kwargs, "parse_constant": _refuse_constant})


def loads(data: str | bytes) -> Any:  # noqa: ANN401 - the caller checks the shape it expects
    """`json.loads` without NaN and the infinities; ValueError for them as for any other bad JSON."""
    return json.loads(data, cls=StrictJSONDecoder)


def numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """The claim `name` as a finite number, None when it is absent (whether it may be is the caller's
    rule); ValueError if it is present but not a finite number (`null` included)."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} is not a NumericDate")  # noqa: TRY004 - one error for any bad claim
    try:
        number = float(value)  # an integer of 309 digits or more does not fit: OverflowError
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name} is not a finite NumericDate")
    return number
