"""POST /webhooks/tiktok: TikTok's `authorization.removed` event (a user disconnected our app).

TikTok signs each delivery: header `TikTok-Signature: t=<unix time>,s=<hex HMAC-SHA256>` over
`t + "." + raw body`, keyed with the app's client secret. Deliveries are at least once and retried for
72 h unless answered 200 promptly, so the handler verifies, de-duplicates, answers 200 at once and applies
the configured policy (record, disable or unlink) to Keycloak after the answer has gone out. What must
not be lost is written before the answer, each write confirmed by the Redis replicas: every bridge
session of the user ended, the vault's grant forgotten, the tombstone, the deauthorization queued for
Keycloak. A failure there answers 503 (and forgets the delivery), so that TikTok's retries carry it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, Response

from bridge.domain.errors import BridgeError, InvalidRequest, WebhookSignatureRejected
from bridge.observability.metrics import DEAUTHORIZATIONS_PENDING
from bridge.web.support import client_ip, error_response, read_body, resources_of

if TYPE_CHECKING:
    from starlette.requests import Request

    from bridge.services.deauthorization import DeauthorizationService

log = logging.getLogger(__name__)

PATH = "/webhooks/tiktok"
EVENT_REMOVED = "authorization.removed"
# TikTok's events are a few hundred bytes; SECURITY.md promises 413 above this.
MAX_BODY_BYTES = 16 * 1024
TIMESTAMP = re.compile(r"[0-9]{1,12}")
HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
# TikTok's open_ids are short visible-ASCII strings; anything else cannot name one of our users.
OPEN_ID = re.compile(r"[\x21-\x7e]{1,256}")


def parse_signature(header: str | None, *, max_age: int, now: float | None = None) -> tuple[str, str]:
    """(timestamp, signature) of a well-formed, fresh `TikTok-Signature` header; the cheap checks, made
    before any of the body is read."""
    if not header:
        raise WebhookSignatureRejected(detail="no TikTok-Signature header")
    parts = dict(part.strip().split("=", 1) for part in header.split(",") if "=" in part)
    timestamp, signature = parts.get("t", ""), parts.get("s", "")
    # ASCII only: headers arrive as latin-1, where "²" passes str.isdigit() but not int(), and
    # hmac.compare_digest refuses non-ASCII text (both were 500s).
    if not TIMESTAMP.fullmatch(timestamp) or not HEX_SHA256.fullmatch(signature):
        raise WebhookSignatureRejected(detail="malformed TikTok-Signature header")
    if abs((now if now is not None else time.time()) - int(timestamp)) > max_age:
        raise WebhookSignatureRejected(detail="TikTok-Signature timestamp too old or in the future")
    return timestamp, signature


def check_signature(timestamp: str, signature: str, body: bytes, secret: str) -> None:
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature.lower()):
        raise WebhookSignatureRejected(detail="TikTok-Signature does not match")


def verify_signature(
    header: str | None, body: bytes, secret: str, *, max_age: int, now: float | None = None
) -> None:
    """Raise WebhookSignatureRejected unless `header` signs `body` with `secret` within `max_age` seconds."""
    timestamp, signature = parse_signature(header, max_age=max_age, now=now)
    check_signature(timestamp, signature, body, secret)


async def _attempt(deauthorization: DeauthorizationService, open_id: str, reason: object) -> None:
    try:
        outcome = await deauthorization.attempt(open_id)
    except BridgeError as exc:
        # Recorded and queued before the 200: the retry loop applies it later.
        log.warning(
            "deauthorization not applied yet, kept for a retry",
            extra={"error_type": type(exc).__name__, "detail": exc.detail},
        )
        return
    if outcome == "pending":
        # Kept in the shared cache; every replica retries it (`retry_pending_deauthorizations`).
        log.warning("deauthorization pending: Keycloak did not take it, retrying", extra={"reason": reason})
        return
    log.info("tiktok deauthorization", extra={"outcome": outcome, "reason": reason})


async def retry_pending_deauthorizations(deauthorization: DeauthorizationService, interval: float) -> None:
    """Run for the process's life: every `interval` seconds, retry the deauthorizations that are due.
    Every replica runs it; the identity's lock makes one of them apply each event."""
    while True:
        await asyncio.sleep(interval)
        try:
            await deauthorization.retry_deauthorizations()
            # Every replica reads the shared queue, so each worker's gauge says the same; see metrics.
            DEAUTHORIZATIONS_PENDING.set(await deauthorization.pending())
        except BridgeError as exc:
            log.warning(
                "pending deauthorizations not read",
                extra={"error_type": type(exc).__name__, "detail": exc.detail},
            )
        except Exception as exc:  # noqa: BLE001 - a bug must not end the loop; named, without a traceback
            log.error(  # noqa: TRY400 - no traceback: its locals may hold a secret
                "pending deauthorizations: unexpected error", extra={"error_type": type(exc).__name__}
            )


async def tiktok_webhook(request: Request) -> Response:
    resources = resources_of(request)
    settings = resources.settings
    # Cheapest first, before a byte of the body is buffered: the caller's rate, then the signature
    # header's shape and age (an outside test held 10,000 unsigned 64 KiB bodies in memory).
    await resources.limiter.check_webhook(client_ip(request))
    timestamp, signature = parse_signature(
        request.headers.get("tiktok-signature"), max_age=settings.webhook_max_age
    )
    body = await read_body(request, limit=MAX_BODY_BYTES)
    check_signature(timestamp, signature, body, settings.tiktok.client_secret.get_secret_value())
    try:
        event: Any = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        event = None
    if (
        not isinstance(event, dict)
        or not isinstance(event.get("user_openid"), str)
        or not OPEN_ID.fullmatch(event["user_openid"])
    ):
        return error_response(InvalidRequest("Not a TikTok event."), path=PATH)
    if event.get("client_key") != settings.tiktok.client_key or event.get("event") != EVENT_REMOVED:
        # Signed by our secret but not ours to act on (another event type): acknowledged, ignored.
        return JSONResponse({"status": "ignored"})
    if resources.sessions is not None:
        # Before the 200, and idempotent: if the session store (or, with the Strapi jwt exchange on,
        # Keycloak, asked for the linked account) cannot take it, TikTok gets a 503 and delivers again
        # (for up to 72 h), so ending the user's sessions is never lost.
        await resources.sessions.deauthorized(event["user_openid"])
    if not await resources.webhook_deliveries.first_time(body):
        return JSONResponse({"status": "duplicate"})
    open_id, reason = event["user_openid"], _reason(event.get("content"))
    try:
        # Before the 200 too: the tombstone and the queued deauthorization must outlive a failover.
        queued = await resources.deauthorization.record(open_id)
    except BridgeError:
        # Answered 503: TikTok delivers again, which must not be taken for a duplicate then.
        await resources.webhook_deliveries.forget(body)
        raise
    if resources.cache.degraded:
        # The revocation's record lives in this process's memory only: other replicas, and this one
        # once Redis is back, still accept the user's cached profiles until they expire.
        log.warning("deauthorization recorded in this process only: the shared cache is unreachable")
    if not queued:
        log.info("tiktok deauthorization", extra={"outcome": "recorded", "reason": reason})
        return JSONResponse({"status": "accepted"})
    task = BackgroundTask(_attempt, resources.deauthorization, open_id, reason)
    return JSONResponse({"status": "accepted"}, background=task)


def _reason(content: object) -> object:
    """TikTok's `content` is a JSON document in a string; anything else (found by fuzzing: a number
    raised TypeError, a 500) just means no reason is known."""
    try:
        details = json.loads(content) if isinstance(content, str) else None
    except (ValueError, RecursionError):
        return None
    return details.get("reason") if isinstance(details, dict) else None
