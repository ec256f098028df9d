"""Identity providers the bridge verifies users with: TikTok today (`providers.tiktok`).

May import outbound, the use cases' ports, protocol, observability and domain; not Keycloak or storage.
"""
