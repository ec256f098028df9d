"""Structured JSON log lines with a request id, and a last line of defence against leaked credentials.

Code never passes tokens, codes or secrets to a logger; `RedactingFilter` also masks anything shaped like
one (TikTok `act.`/`rft.` tokens, JWTs, bearer headers) in case a library message carries it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_SECRET_PATTERNS = (
    re.compile(r"\b(?:act|rft|clt)\.[A-Za-z0-9!._~+/=-]{8,}"),  # TikTok tokens
    re.compile(r"\btkb1\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),  # the bridge's refresh tokens
    re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),  # JWS compact
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=!-]{8,}"),
    re.compile(
        r"(?i)\b(client_secret|code_verifier|subject_token|assertion|code|access_token|refresh_token|token)=[^&\s\"']+"
    ),
)
# uvicorn adds "color_message", the same text with terminal colour codes: noise in a JSON line.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",
}


def redact(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: f"{m.group(0)[:4]}[REDACTED]", text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        for name, value in list(vars(record).items()):
            if name not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, name, redact(value))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if (rid := request_id.get()) is not None:
            entry["request_id"] = rid
        entry |= {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type and message only: a traceback's locals could hold a token.
            entry["error"] = redact(f"{record.exc_info[0].__name__}: {record.exc_info[1]}")
        return json.dumps(entry, default=str)


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx2 logs every request URL at INFO; URLs can carry query parameters we do not want in logs.
    for noisy in ("httpx2", "httpcore2", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # uvicorn's access log would print the client's request line; our own access log replaces it.
    logging.getLogger("uvicorn.access").disabled = True
