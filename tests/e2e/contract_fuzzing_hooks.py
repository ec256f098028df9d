"""Schemathesis hooks of the contract fuzzing run (`test_contract_fuzzing.py` has schemathesis load this
file through SCHEMATHESIS_HOOKS; importing it elsewhere would register its authentication there too):
which client each request to /token and /revoke authenticates as.

A schema can say that HTTP Basic is accepted, not which credentials are good, so schemathesis alone
never reaches what only an authenticated client reaches (the token vault, and while the allow-list is
on every exchange). Four cases in ten keep what schemathesis generated (no client, or made-up
credentials); the others authenticate as the vault's client (HTTP Basic, or in the form), as a
confidential client outside the vault, or as a public client. The choice is a function of the case's
own values, so a case replays with the client it failed with; the document's examples of the vault's
and the Strapi jwt's requests always authenticate as the vault's client. The credentials come from the
test, in the CONTRACT_FUZZING_CLIENTS variable (JSON)."""

from __future__ import annotations

import base64
import json
import os
import zlib
from typing import TYPE_CHECKING, Any

import schemathesis

if TYPE_CHECKING:
    from schemathesis import Case
    from schemathesis.auths import AuthContext

CLIENTS_VARIABLE = "CONTRACT_FUZZING_CLIENTS"
# Out of ten cases, how many authenticate and how; the rest keep what schemathesis generated. A case that
# names the vault's or the Strapi jwt's token type authenticates nine times in ten: what it is generated
# for lies behind the client's authentication.
ROTATION = ("vault_basic", "vault_basic", "vault_basic", "vault_form", "other_basic", "public_form")
ROTATION_BEHIND_AUTHENTICATION = (
    *("vault_basic",) * 5,
    "vault_form",
    "vault_form",
    "other_basic",
    "public_form",
)
ROTATION_LENGTH = 10
EXAMPLES_PHASE = "examples"
TOKEN_TYPES_BEHIND_AUTHENTICATION = (
    "urn:tiktok-keycloak-bridge:params:oauth:token-type:tiktok-access-token",
    "urn:tiktok-keycloak-bridge:params:oauth:token-type:strapi-jwt",
)


def _basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


@schemathesis.auth(refresh_interval=None).apply_to(path=["/token", "/revoke"])
class RotatingClients:
    """Authenticate part of the cases, each in its own way (see the module's docstring)."""

    def __init__(self) -> None:
        clients: dict[str, Any] = json.loads(os.environ[CLIENTS_VARIABLE])
        self.vault: tuple[str, str] = tuple(clients["vault"])
        self.other: tuple[str, str] = tuple(clients["other"])
        self.public: str = clients["public"]

    def get(self, case: Case[Any], _context: AuthContext) -> str | None:
        drawn = zlib.crc32(repr((case.body, sorted(dict(case.headers or {}).items()))).encode())
        values = case.body.values() if isinstance(case.body, dict) else ()
        behind = any(value in TOKEN_TYPES_BEHIND_AUTHENTICATION for value in values)
        if behind and case.meta is not None and case.meta.phase.name == EXAMPLES_PHASE:
            # The document's own examples of the vault's and the Strapi jwt's requests: sent once, as
            # the vault's client, so every run reaches those branches at least through them.
            return "vault_basic"
        rotation = ROTATION_BEHIND_AUTHENTICATION if behind else ROTATION
        slot = drawn % ROTATION_LENGTH
        return rotation[slot] if slot < len(rotation) else None

    def set(self, case: Case[Any], data: str, _context: AuthContext) -> None:
        headers = case.headers
        # The form's generated client parameters give way to the chosen client's (with both, every case
        # would be refused for authenticating twice), except in a negative case of /revoke: there the
        # invalid part may be one of them, and without it /revoke rightly accepts any token.
        negative = case.meta is not None and case.meta.generation.mode.is_negative
        keep = negative and case.operation.path == "/revoke"
        form = case.body if isinstance(case.body, dict) and not keep else None
        if form is not None:
            for name in ("client_id", "client_secret"):
                form.pop(name, None)
        headers.pop("Authorization", None)
        if data == "vault_form" and form is not None:
            form["client_id"], form["client_secret"] = self.vault
        elif data == "public_form" and form is not None:
            form["client_id"] = self.public
        elif data == "other_basic":
            headers["Authorization"] = _basic(*self.other)
        else:  # the vault's client in HTTP Basic, or in Basic where the body is not to be touched
            headers["Authorization"] = _basic(*self.vault)
