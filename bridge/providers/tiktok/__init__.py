"""TikTok as the bridge's identity provider (`ports.IdentityProvider`), everything TikTok-specific in one
place: `client` (Login Kit and Open API v2: redeem a code, read the profile, refresh, revoke; TikTok's
refusals as upstream errors, its scope fallback and token prefix), `tokens` (the subject token URN of a
TikTok code and TikTok's PKCE rule, handed to the RFC 8693 parser by composition) and `settings` (the
BRIDGE_TIKTOK_* variables, nested as `settings.tiktok`). Only composition (`factory.py`), the web edge
and the command line import it (an import-linter contract).
"""
