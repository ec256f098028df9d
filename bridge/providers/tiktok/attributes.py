"""The attributes the bridge keeps on a Keycloak user for a TikTok identity: part of the product's
public surface (the realm's user profile declares them, `tiktok_open_id` is a claim of every token, and
`keycloak/realm_spec.py` spells the same names for the realm, which a test holds equal)."""

from __future__ import annotations

from bridge.domain.model import IdentityAttributes

ATTRIBUTES = IdentityAttributes(
    subject="tiktok_open_id",
    union_id="tiktok_union_id",
    display_name="tiktok_display_name",
    username="tiktok_username",
    verified="tiktok_is_verified",
)
