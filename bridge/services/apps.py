"""The use case per app: an app mapped to a Keycloak client of its own (BRIDGE_KEYCLOAK_CLIENTS) mints
as that client, so `azp` names the app; an app with an audience list of its own (BRIDGE_CLIENT_AUDIENCES)
may ask only for those. Every other app, and requests without a client id, use the bridge's default.

Sessions remember their app (the session record's client_id), and mint through `Apps.mint` with it, so
a refresh is issued by the same Keycloak client as the sign-in that started the session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from bridge.domain.model import IssuedToken
    from bridge.services.exchange import ExchangeService


class Apps:
    def __init__(self, default: ExchangeService, by_client: Mapping[str, ExchangeService]) -> None:
        self.default = default
        self._by_client = dict(by_client)

    def exchange_for(self, client_id: str | None) -> ExchangeService:
        """The use case for an authenticated app (None: no allow-list, the bridge's own client)."""
        if client_id is None:
            return self.default
        return self._by_client.get(client_id, self.default)

    async def mint(
        self,
        open_id: str,
        scope: tuple[str, ...],
        *,
        audiences: tuple[str, ...] = (),
        client_id: str | None = None,
    ) -> IssuedToken:
        return await self.exchange_for(client_id).mint(open_id, scope, audiences)
