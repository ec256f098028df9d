"""The use cases per app: an app mapped to a Keycloak client of its own (BRIDGE_KEYCLOAK_CLIENTS) mints
as that client, so `azp` names the app; an app with an audience list of its own (BRIDGE_CLIENT_AUDIENCES)
may ask only for those. Every other app, and requests without a client id, use the bridge's default.

Sessions remember their app (the session record's client_id), and mint through `Apps.mint` with it, so
a refresh is issued by the same Keycloak client as the sign-in that started the session; a refresh
reaches the app's minting only, not its exchange.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from bridge.domain.model import IssuedToken
    from bridge.services.exchange import ExchangeService
    from bridge.services.minting import MintingService


@dataclass(frozen=True, slots=True)
class App:
    """One app's use cases: its exchange, and the minting that exchange and the app's sessions share."""

    exchange: ExchangeService
    minting: MintingService


class Apps:
    def __init__(self, default: App, by_client: Mapping[str, App]) -> None:
        # Plain lookups: every exchange and every refresh makes one.
        self._default_exchange, self._default_minting = default.exchange, default.minting
        self._exchanges = {client: app.exchange for client, app in by_client.items()}
        self._mintings = {client: app.minting for client, app in by_client.items()}

    def exchange_for(self, client_id: str | None) -> ExchangeService:
        """The use case for an authenticated app (None: no allow-list, the bridge's own client)."""
        if client_id is None:
            return self._default_exchange
        return self._exchanges.get(client_id, self._default_exchange)

    def minting_for(self, client_id: str | None) -> MintingService:
        """The minting of an app (None: the bridge's own client)."""
        if client_id is None:
            return self._default_minting
        return self._mintings.get(client_id, self._default_minting)

    async def mint(
        self,
        open_id: str,
        scope: tuple[str, ...],
        *,
        audiences: tuple[str, ...] = (),
        client_id: str | None = None,
        by_account: bool = False,
    ) -> IssuedToken:
        return await self.minting_for(client_id).mint(open_id, scope, audiences, by_account=by_account)
