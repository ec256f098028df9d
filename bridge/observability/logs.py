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

_SECRET_SHAPES = (
    r"\b(?:act|rft|clt)\.[A-Za-z0-9!._~+/=-]{8,}",  # TikTok tokens
    r"\btkb1\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",  # the bridge's refresh tokens
    r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",  # JWS compact
    r"(?i:\b(?:bearer|basic)\s+[A-Za-z0-9._~+/=!-]{8,})",
    (
        r"(?i:\b(?:client_secret|code_verifier|subject_token|assertion|code|access_token|refresh_token|token)"
        r"=[^&\s\"']+)"
    ),
)
# All shapes as one alternation: one scan per string instead of one per shape (a warm exchange logs two
# lines at INFO, and each string field of each line is scanned).
_SECRETS = re.compile("|".join(_SECRET_SHAPES))
# uvicorn adds "color_message", the same text with terminal colour codes: noise in a JSON line.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",
}


def _masked(match: re.Match[str]) -> str:
    return f"{match.group(0)[:4]}[REDACTED]"


def redact(text: str) -> str:
    return _SECRETS.sub(_masked, text)


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
    # What the JSON line never shows is not gathered either (the logging HOWTO's "Optimization"): the
    # caller's file and line (a stack walk per record), thread, process and multiprocessing names.
    logging._srcfile = None  # noqa: SLF001 - the documented switch
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
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
