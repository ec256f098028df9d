"""State shared by replicas: the cache and session store over Redis (with its in-memory stand-ins),
rate limits and quotas, sealing at rest, the per-process profile copies.

May import outbound, the use cases' ports, observability and domain; not Keycloak or TikTok.
"""
