"""The optional client allow-list of the token endpoint (RFC 6749 §2.3 client authentication).

Off unless BRIDGE_PUBLIC_CLIENT_IDS or BRIDGE_CONFIDENTIAL_CLIENTS is set. Then each request names its
client: a known public client id (mobile apps cannot keep a secret), or a confidential client with its
secret in the form (`client_id`, `client_secret`) or in HTTP Basic. Secrets are compared in constant time.
The client id goes into the exchange's log line, so an operator can tell which app asked.
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass
from urllib.parse import unquote

from bridge.domain.errors import InvalidClient

# The client id of the Strapi-compatible endpoint's sessions. Its apps authenticate as no client (the
# plugin's API has none), so while the allow-list is on their sessions are bound to this public id: a
# new app version refreshes at /token with it, and no other client may refresh or revoke them.
STRAPI_CLIENT_ID = "tiktok-auth-mobile"


@dataclass(frozen=True)
class ClientRegistry:
    public: frozenset[str]
    confidential: dict[str, str]

    @property
    def enabled(self) -> bool:
        return bool(self.public or self.confidential)

    @classmethod
    def of(cls, public: frozenset[str], confidential: dict[str, str], *, strapi: bool) -> ClientRegistry:
        """The allow-list as configured; with it on and the Strapi-compatible endpoint served, that
        endpoint's sessions' client id is a public client too."""
        if (public or confidential) and strapi:
            public |= {STRAPI_CLIENT_ID}
        return cls(public=public, confidential=confidential)

    def session_client(self, endpoint_client: str) -> str | None:
        """The client a session started at an endpoint without client authentication is bound to: the
        endpoint's own id while the allow-list is on, nothing while client ids mean nothing."""
        return endpoint_client if self.enabled else None

    def authenticate(
        self, authorization: str | None, form_id: str | None, form_secret: str | None
    ) -> str | None:
        """The authenticated client id, None when the allow-list is off; InvalidClient otherwise."""
        if not self.enabled:
            return None
        client_id, secret = form_id, form_secret
        if authorization and authorization[:6].lower() == "basic ":
            if form_secret is not None:
                raise InvalidClient("Use one client authentication method, not two.")  # RFC 6749 §2.3
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
            except ValueError as exc:
                # binascii.Error and UnicodeDecodeError are ValueErrors, and so is b64decode's refusal
                # of a non-ASCII header (Starlette decodes header bytes as Latin-1).
                raise InvalidClient from exc
            basic_id, _, basic_secret = decoded.partition(":")
            client_id, secret = unquote(basic_id), unquote(basic_secret)  # RFC 6749 §2.3.1 form-encodes them
        if not client_id:
            raise InvalidClient("A client_id is required.")
        expected = self.confidential.get(client_id)
        if expected is not None:
            if secret is None or not hmac.compare_digest(secret.encode(), expected.encode()):
                raise InvalidClient
            return client_id
        if client_id in self.public and secret is None:
            return client_id
        raise InvalidClient
