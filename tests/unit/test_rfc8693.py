"""Parsing and validation of RFC 8693 requests, and the shape of responses."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from bridge.domain.errors import InvalidRequest, InvalidScope, InvalidTarget, OAuthError, UnsupportedGrantType
from bridge.domain.model import IssuedToken
from bridge.protocol.rfc6749 import parse_form
from bridge.protocol.rfc8693 import (
    GRANT_TYPE_TOKEN_EXCHANGE,
    TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_ID_TOKEN,
    AccessTokenExchange,
    CodeExchange,
    ExchangeRequest,
    SubjectTokenTypes,
    exchange_response,
    parse_exchange_request,
)
from bridge.providers.tiktok.tokens import SUBJECT_TOKEN_TYPES, TOKEN_TYPE_TIKTOK_CODE

FORM = "application/x-www-form-urlencoded"
BASE = {
    "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
    "subject_token": "act.abc!1234.va",
    "subject_token_type": TOKEN_TYPE_ACCESS_TOKEN,
}


def parse(**overrides: str | None) -> ExchangeRequest:
    form = {k: v for k, v in {**BASE, **overrides}.items() if v is not None}
    return parse_exchange_request(parse_form(urlencode(form).encode(), FORM), SUBJECT_TOKEN_TYPES)


def test_minimal_request_defaults_to_an_access_token() -> None:
    """A request with only the required parameters asks for an access token with no scope."""
    request = parse()
    assert isinstance(request, AccessTokenExchange)
    assert request.access_token == "act.abc!1234.va"
    assert request.requested_token_type == TOKEN_TYPE_ACCESS_TOKEN
    assert request.scope == ()


def test_rfc8693_appendix_a_style_request_with_scope() -> None:
    """Scope is split on spaces and de-duplicated in order (RFC 6749 §3.3)."""
    request = parse(scope="openid profile openid")
    assert request.scope == ("openid", "profile")


def test_requesting_an_id_token_adds_openid_scope() -> None:
    """Keycloak only issues ID tokens for OpenID requests, so the parser adds openid."""
    request = parse(requested_token_type=TOKEN_TYPE_ID_TOKEN, scope="profile")
    assert request.scope == ("openid", "profile")


def test_audience_and_resource_are_parsed_as_targets_in_order_without_duplicates() -> None:
    """audience and resource (RFC 8707) both name targets; which are allowed is decided later."""
    assert parse(audience="orders", resource="https://billing.example/").audiences == (
        "orders",
        "https://billing.example/",
    )
    assert parse(audience="https://a.example", resource="https://a.example").audiences == (
        "https://a.example",
    )
    assert parse().audiences == ()


def test_repr_never_shows_the_subject_token() -> None:
    """A request that reaches a log line through repr() does not leak the token."""
    assert "act.abc" not in repr(parse())


@pytest.mark.parametrize(
    ("overrides", "error", "description"),
    [
        ({"grant_type": None}, InvalidRequest, "The grant_type parameter is missing."),
        ({"grant_type": "authorization_code"}, UnsupportedGrantType, None),
        ({"subject_token": None}, InvalidRequest, "The subject_token parameter is missing."),
        ({"subject_token": ""}, InvalidRequest, "The subject_token parameter is missing."),
        ({"subject_token": "has space"}, InvalidRequest, "The subject_token is malformed."),
        ({"subject_token": "x" * 5000}, InvalidRequest, "The subject_token is malformed."),
        ({"subject_token_type": None}, InvalidRequest, "The subject_token_type parameter is missing."),
        ({"subject_token_type": "urn:x"}, InvalidRequest, "The subject_token_type is not supported."),
        ({"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"}, InvalidRequest, None),
        ({"actor_token": "a", "actor_token_type": TOKEN_TYPE_ACCESS_TOKEN}, InvalidRequest, None),
        ({"actor_token_type": TOKEN_TYPE_ACCESS_TOKEN}, InvalidRequest, None),
        ({"audience": 'quo"te'}, InvalidTarget, "The audience parameter is malformed."),
        ({"resource": "not-a-uri"}, InvalidTarget, None),
        ({"resource": "https://api.example/#fragment"}, InvalidTarget, None),
        ({"scope": 'bad"scope'}, InvalidScope, "The scope parameter is malformed."),
        ({"code_verifier": "x" * 43}, InvalidRequest, None),
        ({"subject_token_type": TOKEN_TYPE_TIKTOK_CODE}, InvalidRequest, None),
        (
            {
                "subject_token_type": TOKEN_TYPE_TIKTOK_CODE,
                "code_verifier": "short",
                "redirect_uri": "https://a",
            },
            InvalidRequest,
            "The code_verifier is malformed.",
        ),
    ],
)
def test_invalid_requests_map_to_rfc_errors(
    overrides: dict[str, str | None], error: type[OAuthError], description: str | None
) -> None:
    """Each malformed request raises the RFC 6749/8693 error meant for it."""
    with pytest.raises(error) as caught:
        parse(**overrides)
    assert type(caught.value) is error
    if description is not None:
        assert caught.value.description == description


def test_authorization_code_request_carries_verifier_and_redirect() -> None:
    """A TikTok authorization code needs a PKCE verifier (32 chars allowed, Android) and a redirect URI."""
    request = parse(
        subject_token_type=TOKEN_TYPE_TIKTOK_CODE,
        code_verifier="a" * 32,
        redirect_uri="https://app.example/cb",
    )
    assert isinstance(request, CodeExchange)
    assert request.code_verifier == "a" * 32
    assert request.redirect_uri == "https://app.example/cb"
    assert request.subject_token_type == TOKEN_TYPE_TIKTOK_CODE


def test_the_parser_accepts_only_the_subject_token_types_it_is_handed() -> None:
    """Without a provider's code type registered, TikTok's code URN is an unsupported subject token
    type: the parser knows no provider of its own."""
    form = {**BASE, "subject_token_type": TOKEN_TYPE_TIKTOK_CODE, "code_verifier": "a" * 43}
    with pytest.raises(InvalidRequest) as caught:
        parse_exchange_request(form, SubjectTokenTypes())
    assert caught.value.description == "The subject_token_type is not supported."


def test_a_code_type_without_a_rule_of_its_own_follows_rfc_7636() -> None:
    """A code type registered without its provider's PKCE rule takes RFC 7636's: 43 characters at
    least, so TikTok's 32-character Android verifier passes only under TikTok's rule."""
    generic = SubjectTokenTypes(codes=("urn:example:code",))
    form = {**BASE, "subject_token_type": "urn:example:code", "redirect_uri": "https://app.example/cb"}
    with pytest.raises(InvalidRequest) as caught:
        parse_exchange_request({**form, "code_verifier": "a" * 32}, generic)
    assert caught.value.description == "The code_verifier is malformed."
    request = parse_exchange_request({**form, "code_verifier": "a" * 43}, generic)
    assert isinstance(request, CodeExchange)
    assert request.subject_token_type == "urn:example:code"


@pytest.mark.parametrize(
    ("body", "content_type", "description"),
    [
        (b"grant_type=x", "application/json", "The body must be application/x-www-form-urlencoded."),
        (b"grant_type=x", None, "The body must be application/x-www-form-urlencoded."),
        (b"a=1&a=2", FORM, "The parameter (unknown) is repeated."),
        (b"scope=a&scope=b", FORM, "The parameter scope is repeated."),
        ("subject_token=é".encode(), FORM, "The body is not valid form encoding."),
        (b"subject_token=%ff", FORM, "A parameter is not valid UTF-8."),
        (b"&".join(b"p%d=1" % i for i in range(30)), FORM, None),
        (b"x" * 20000, FORM, "The request body is too large."),
    ],
)
def test_form_parsing_refuses_ambiguous_bodies(
    body: bytes, content_type: str | None, description: str | None
) -> None:
    """Wrong media types, repeated parameters, bad UTF-8 and oversized bodies are invalid_request."""
    with pytest.raises(InvalidRequest) as caught:
        parse_form(body, content_type)
    if description is not None:
        assert caught.value.description == description


def test_form_parsing_accepts_charset_parameter_and_empty_values() -> None:
    """A charset parameter on the media type is fine and blank values are kept (then judged as missing)."""
    assert parse_form(b"a=&b=1", "application/x-www-form-urlencoded; charset=UTF-8") == {"a": "", "b": "1"}


def test_response_for_access_token_includes_id_token_when_issued() -> None:
    """The §2.2.1 body names the issued type, Bearer, lifetime, scope, and carries Keycloak's ID token."""
    issued = IssuedToken(access_token="at", expires_in=300, scope="openid profile", id_token="it")
    assert exchange_response(issued, TOKEN_TYPE_ACCESS_TOKEN) == {
        "access_token": "at",
        "issued_token_type": TOKEN_TYPE_ACCESS_TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "openid profile",
        "id_token": "it",
    }


def test_response_for_id_token_uses_token_type_n_a() -> None:
    """An ID token is returned in access_token with token_type N_A, as §2.2.1 requires."""
    issued = IssuedToken(access_token="at", expires_in=300, scope="openid", id_token="it")
    assert exchange_response(issued, TOKEN_TYPE_ID_TOKEN) == {
        "access_token": "it",
        "issued_token_type": TOKEN_TYPE_ID_TOKEN,
        "token_type": "N_A",
        "expires_in": 300,
        "scope": "openid",
    }
