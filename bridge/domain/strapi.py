"""What the bridge knows of a Strapi users-permissions user, and the attributes an imported user keeps.

The Strapi plugin "TikTok Auth Mobile" keeps no TikTok open_id: its users are `up_users` rows with
provider `tiktok` and the pseudo-email `<union_id>@tiktok.com`, lowercased. The union_id inside that
address is the only TikTok identifier a Strapi database holds, so the import keeps it (lowercased, as
Strapi has it) with Strapi's own identifiers.
"""

from __future__ import annotations

from dataclasses import dataclass

TIKTOK_PROVIDER = "tiktok"
PSEUDO_EMAIL_DOMAIN = "@tiktok.com"

# Strapi's identifiers of an imported user, declared admin-only in the user profile: apps key their data
# on them, so the user must not be able to change them.
ATTR_STRAPI_ID = "strapi_id"
ATTR_STRAPI_DOCUMENT_ID = "strapi_document_id"
ATTR_STRAPI_CREATED_AT = "strapi_created_at"
# The username Strapi answered (the plugin set it to the TikTok display name at the user's first sign-in):
# kept apart from TikTok's display name, which later sign-ins overwrite.
ATTR_STRAPI_USERNAME = "strapi_username"
# The highest Strapi id handed out or imported so far, kept on one marker account the bridge owns
# (`services/strapi_ids.py`): Keycloak's durable record, which a lost Redis counter is raised above.
ATTR_STRAPI_ID_HIGH_WATER = "strapi_id_high_water"
HIGH_WATER_USERNAME = "tiktok-bridge-strapi-id-high-water"
STRAPI_ATTRIBUTES = (
    ATTR_STRAPI_ID,
    ATTR_STRAPI_DOCUMENT_ID,
    ATTR_STRAPI_CREATED_AT,
    ATTR_STRAPI_USERNAME,
    ATTR_STRAPI_ID_HIGH_WATER,
)
# The claim that carries `strapi_id` (a JSON number) in the Strapi-compatible client's tokens.
STRAPI_ID_CLAIM = ATTR_STRAPI_ID


@dataclass(frozen=True, slots=True)
class StrapiUser:
    """One `up_users` row of a TikTok sign-in: the columns the import reads, and no password."""

    id: int
    username: str | None
    email: str | None
    blocked: bool
    # Strapi 5 only; Strapi 4 has no document ids.
    document_id: str | None
    # ISO 8601 in UTC, as Strapi answers `createdAt`.
    created_at: str | None

    @property
    def union_id(self) -> str | None:
        """TikTok's union_id, from the pseudo-email (lowercased, as the plugin stored it)."""
        email = (self.email or "").lower()
        if not email.endswith(PSEUDO_EMAIL_DOMAIN):
            return None
        union_id = email.removesuffix(PSEUDO_EMAIL_DOMAIN)
        return union_id or None


@dataclass(frozen=True, slots=True)
class StrapiCensus:
    """How many users a Strapi database holds, by users-permissions provider."""

    by_provider: dict[str, int]
    # The highest `up_users` id of any provider: numbers handed out after the move start above it, so
    # none names a Strapi user (a local one included) that an app's data may still be keyed on.
    highest_id: int = 0

    @property
    def tiktok(self) -> int:
        return self.by_provider.get(TIKTOK_PROVIDER, 0)

    @property
    def others(self) -> int:
        return sum(n for provider, n in self.by_provider.items() if provider != TIKTOK_PROVIDER)
