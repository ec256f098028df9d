"""TikTok webhook signature checks (HMAC-SHA256 of t + "." + body with the client secret)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from bridge.domain.errors import WebhookSignatureRejected
from bridge.web.webhook import verify_signature

SECRET = "emulated-client-secret"
BODY = b'{"client_key":"k","event":"authorization.removed","create_time":1615338610,"user_openid":"-000a"}'


def sign(body: bytes, t: int, secret: str = SECRET) -> str:
    return f"t={t},s={hmac.new(secret.encode(), f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}"


def test_valid_signature_passes() -> None:
    """A delivery signed with our secret a moment ago is accepted (upper-case hex too)."""
    verify_signature(sign(BODY, 1_000_000), BODY, SECRET, max_age=300, now=1_000_010)
    verify_signature(
        sign(BODY, 1_000_000).upper().replace("T=", "t=").replace("S=", "s="),
        BODY,
        SECRET,
        max_age=300,
        now=1_000_010,
    )


@pytest.mark.parametrize(
    ("header", "now"),
    [
        (None, 1_000_000),
        ("", 1_000_000),
        ("garbage", 1_000_000),
        ("t=abc,s=00", 1_000_000),
        (sign(BODY, 1_000_000), 1_000_301),  # too old
        (sign(BODY, 1_000_400), 1_000_000),  # from the future
        (sign(BODY, 1_000_000, secret="another-app"), 1_000_000),
        (sign(BODY + b" ", 1_000_000), 1_000_000),  # body changed after signing
    ],
)
def test_bad_signatures_are_rejected(header: str | None, now: int) -> None:
    """Missing, malformed, stale, future, foreign-key and tampered deliveries are refused with 401."""
    with pytest.raises(WebhookSignatureRejected) as caught:
        verify_signature(header, BODY, SECRET, max_age=300, now=now)
    assert caught.value.status_code == 401


@pytest.mark.parametrize(
    "t", ["NaN", "nan", "Infinity", "inf", "-inf", "1e6", "1000000.0", "-1000000", "+1000000"]
)
def test_a_timestamp_that_is_not_whole_digits_is_refused(t: str) -> None:
    """The signature's `t` must be an integer of ASCII digits, even when the HMAC over it is right: a
    NaN or infinite time would pass any freshness window that compares with it (SECURITY.md, "NaN")."""
    mac = hmac.new(SECRET.encode(), f"{t}.".encode() + BODY, hashlib.sha256).hexdigest()
    with pytest.raises(WebhookSignatureRejected) as caught:
        verify_signature(f"t={t},s={mac}", BODY, SECRET, max_age=300, now=1_000_000)
    assert caught.value.detail == "malformed TikTok-Signature header"
