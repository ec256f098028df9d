"""The local stack (`python -m devstack`): what it tells the person who started it."""

from __future__ import annotations

from devstack.__main__ import bridge_banner


def test_the_banner_names_the_admin_port_the_bridge_was_given() -> None:
    """Issue 24, finding 7: the banner always said 9000 whatever BRIDGE_ADMIN_PORT was; it now names
    the port passed to the bridge, and says when there is no admin listener at all."""
    assert bridge_banner("http://127.0.0.1:8000", 9100, redis=False) == (
        "starting the bridge on http://127.0.0.1:8000 (cache: memory; /metrics and the detailed /readyz "
        "on its admin listener, http://127.0.0.1:9100)"
    )
    assert bridge_banner("http://127.0.0.1:8000", 0, redis=True) == (
        "starting the bridge on http://127.0.0.1:8000 (cache: Redis; no admin listener)"
    )
