"""The OpenAPI document describes what the deployment serving it accepts and answers: the token vault's
request and answer, the Strapi jwt, and client authentication, only where they are configured; the
bridge's own answers validate against it."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import httpx2
import pytest
from jsonschema import Draft202012Validator
from pydantic import SecretStr

from bridge.domain.errors import (
    AccountNotEligible,
    InvalidClient,
    NothingHeld,
    OAuthError,
    SubjectNotAccepted,
    UnauthorizedClient,
    VaultNotAllowed,
)
from bridge.domain.model import IssuedToken
from bridge.protocol.rfc8693 import (
    GRANT_TYPE_TOKEN_EXCHANGE,
    TOKEN_TYPE_ACCESS_TOKEN,
    exchange_response,
    stored_token_response,
)
from bridge.providers.strapi.tokens import TOKEN_TYPE_STRAPI_JWT
from bridge.providers.tiktok.tokens import TOKEN_TYPE_TIKTOK_ACCESS_TOKEN, TOKEN_TYPE_TIKTOK_CODE
from bridge.web import openapi
from bridge.web.app import create_app

if TYPE_CHECKING:
    from bridge.settings import Settings

CODE = TOKEN_TYPE_TIKTOK_CODE
VAULT_FORM = {
    "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
    "subject_token": "not-a-jwt",
    "subject_token_type": TOKEN_TYPE_ACCESS_TOKEN,
    "requested_token_type": TOKEN_TYPE_TIKTOK_ACCESS_TOKEN,
}


def full_document() -> dict[str, Any]:
    return openapi.document(
        "https://bridge.example",
        strapi=True,
        linking=True,
        strapi_jwt=True,
        vault=True,
        clients=True,
        confidential_clients=True,
    )


def validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator of `schema`, its `#/components/...` references resolved in `document`."""
    return Draft202012Validator({**schema, "components": document["components"]})


def token_request_branches(document: dict[str, Any], form: dict[str, str]) -> int:
    """How many of /token's request alternatives `form` satisfies (oneOf: exactly one, or none)."""
    content = document["paths"]["/token"]["post"]["requestBody"]["content"]
    branches = content["application/x-www-form-urlencoded"]["schema"]["oneOf"]
    return sum(validator(document, branch).is_valid(form) for branch in branches)


def test_the_vault_and_client_authentication_are_described_where_configured() -> None:
    """With the vault, the Strapi jwt and confidential clients on: the token types as enums, HTTP Basic as
    an optional security scheme of /token and /revoke, the form's client parameters, a Basic challenge
    on every 401, and the vault's answer as one of the 200s."""
    document = full_document()
    token = document["paths"]["/token"]["post"]
    assert token["security"] == [{"clientBasic": []}, {}]
    assert document["paths"]["/revoke"]["post"]["security"] == [{"clientBasic": []}, {}]
    assert document["components"]["securitySchemes"]["clientBasic"]["scheme"] == "basic"
    exchange, code, _refresh, vault = token["requestBody"]["content"]["application/x-www-form-urlencoded"][
        "schema"
    ]["oneOf"]
    assert TOKEN_TYPE_STRAPI_JWT in exchange["properties"]["subject_token_type"]["enum"]
    assert TOKEN_TYPE_STRAPI_JWT not in code["properties"]["subject_token_type"]["enum"]
    assert "code_verifier" not in exchange["properties"]
    assert {"code_verifier", "redirect_uri"} <= set(code["required"])
    assert TOKEN_TYPE_TIKTOK_ACCESS_TOKEN not in exchange["properties"]["requested_token_type"]["enum"]
    assert vault["properties"]["subject_token_type"] == {"type": "string", "const": TOKEN_TYPE_ACCESS_TOKEN}
    assert vault["properties"]["requested_token_type"]["const"] == TOKEN_TYPE_TIKTOK_ACCESS_TOKEN
    assert {"client_id", "client_secret"} <= set(vault["properties"]) & set(exchange["properties"])
    for path in ("/token", "/revoke"):
        challenge = document["paths"][path]["post"]["responses"]["401"]["headers"]["WWW-Authenticate"]
        assert challenge["required"] is True
    answers = token["responses"]["200"]["content"]["application/json"]["schema"]["oneOf"]
    assert answers[1]["required"] == [
        "access_token",
        "issued_token_type",
        "token_type",
        "expires_in",
        "scope",
    ]
    assert set(token["responses"]) == {"200", "400", "401", "403", "408", "413", "429", "431", "500", "503"}


def test_without_an_allow_list_nothing_of_client_authentication_or_the_vault_is_described() -> None:
    """No allow-list, no vault, no Strapi secret: no security scheme, no client parameters, and neither
    the TikTok token nor the Strapi jwt is a type /token takes."""
    document = openapi.document("https://bridge.example", strapi=False)
    token = document["paths"]["/token"]["post"]
    assert "security" not in token
    assert "security" not in document["paths"]["/revoke"]["post"]
    assert "securitySchemes" not in document["components"]
    branches = token["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]["oneOf"]
    assert len(branches) == 3
    assert all("client_id" not in branch["properties"] for branch in branches)
    assert TOKEN_TYPE_STRAPI_JWT not in str(document)
    assert TOKEN_TYPE_TIKTOK_ACCESS_TOKEN not in str(document)
    assert token_request_branches(document, VAULT_FORM) == 0


def test_every_example_request_is_one_alternative_of_the_token_request() -> None:
    """Each documented example (which a fuzzer sends as it is) is a request of exactly one kind, and the
    vault's and the Strapi jwt's are there only when those are on."""
    document = full_document()
    content = document["paths"]["/token"]["post"]["requestBody"]["content"]
    examples = content["application/x-www-form-urlencoded"]["examples"]
    assert set(examples) == {"tiktok_access_token", "strapi_jwt", "vault"}
    for example in examples.values():
        assert token_request_branches(document, example["value"]) == 1, example
    bare = openapi.document("https://bridge.example", strapi=False)["paths"]["/token"]["post"]
    assert set(bare["requestBody"]["content"]["application/x-www-form-urlencoded"]["examples"]) == {
        "tiktok_access_token"
    }


@pytest.mark.parametrize(
    ("form", "branches"),
    [
        (VAULT_FORM, 1),
        ({**VAULT_FORM, "client_id": "backend", "client_secret": "b-secret", "scope": "video.list"}, 1),
        ({**VAULT_FORM, "subject_token_type": TOKEN_TYPE_STRAPI_JWT}, 0),  # the vault takes realm tokens
        ({**VAULT_FORM, "requested_token_type": TOKEN_TYPE_ACCESS_TOKEN}, 1),  # a TikTok exchange
        ({**VAULT_FORM, "subject_token_type": TOKEN_TYPE_STRAPI_JWT, "requested_token_type": ""}, 0),
        ({k: v for k, v in VAULT_FORM.items() if k != "requested_token_type"}, 1),  # a TikTok exchange
        ({**VAULT_FORM, "requested_token_type": TOKEN_TYPE_ACCESS_TOKEN, "subject_token_type": CODE}, 0),
        (
            {
                **VAULT_FORM,
                "requested_token_type": TOKEN_TYPE_ACCESS_TOKEN,
                "subject_token_type": CODE,
                "code_verifier": "v" * 43,
                "redirect_uri": "https://app.example/callback",
            },
            1,
        ),
    ],
)
def test_each_request_is_one_alternative_of_the_token_request(form: dict[str, str], branches: int) -> None:
    """A vault request matches the vault's alternative alone (a fuzzer generating from the document
    produces it), a Strapi jwt never goes with the TikTok token type, and a code only with its PKCE
    verifier and redirect URI."""
    assert token_request_branches(full_document(), form) == branches


def test_every_answer_the_bridge_builds_validates_against_the_document() -> None:
    """The vault's and the exchange's 200 bodies each match exactly one answer of /token, and every
    refusal the vault and client authentication give matches the OAuth error schema."""
    document = full_document()
    responses = document["paths"]["/token"]["post"]["responses"]
    answer = responses["200"]["content"]["application/json"]["schema"]
    vault_answer = stored_token_response("act.x", TOKEN_TYPE_TIKTOK_ACCESS_TOKEN, 7012, ("user.info.basic",))
    exchanged = exchange_response(
        IssuedToken(access_token="eyJ.x.y", id_token=None, expires_in=300, scope="openid"),
        TOKEN_TYPE_ACCESS_TOKEN,
    )
    for body in (vault_answer, exchanged):
        assert validator(document, answer).is_valid(body), body
        assert sum(validator(document, branch).is_valid(body) for branch in answer["oneOf"]) == 1
    refusals: list[OAuthError] = [
        InvalidClient(),
        VaultNotAllowed(),
        UnauthorizedClient(),
        SubjectNotAccepted(),
        NothingHeld(),
        AccountNotEligible(),
    ]
    for refusal in refusals:
        schema = responses[str(refusal.status_code)]["content"]["application/json"]["schema"]
        validator(document, schema).validate(refusal.body())


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        (_basic("backend", "wrong"), 401),
        (_basic("other", "o-secret"), 400),
        (_basic("backend", "b-secret"), 400),
    ],
)
async def test_the_served_document_describes_the_served_refusals(
    settings: Settings, headers: dict[str, str], status: int
) -> None:
    """Against a bridge with the vault on: the served document's status, headers and body schema for a
    vault request without a client, with a wrong secret, from a client outside the vault and with a
    token that is no realm token."""
    configured = settings.model_copy(
        update={
            "public_client_ids": ("mobile",),
            "confidential_clients": SecretStr("backend=b-secret,other=o-secret"),
            "vault_client_ids": ("backend",),
            "strapi_jwt_secret": SecretStr("strapi-jwt-secret-of-the-test-run"),
        }
    )
    app = create_app(configured)
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://b.test") as http,
    ):
        document = (await http.get("/openapi.json")).json()
        response = await http.post("/token", data=VAULT_FORM, headers=headers)
    assert response.status_code == status
    documented = document["paths"]["/token"]["post"]["responses"][str(status)]
    validator(document, documented["content"]["application/json"]["schema"]).validate(response.json())
    for name, header in documented.get("headers", {}).items():
        assert validator(document, header["schema"]).is_valid(response.headers[name])
    assert document["paths"]["/token"]["post"]["security"] == [{"clientBasic": []}, {}]
