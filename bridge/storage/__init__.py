"""State shared by replicas: typed stores (profiles, identities, sessions, the deauthorization queue,
seen-once guards, the shared admin token) that own their keys (`keys.py`), encodings and lifetimes,
over the cache engines (Redis, process memory, the fallback between them); rate limits and quotas,
sealing at rest, the per-process profile copies.

May import the use cases (their ports and the values they keep), protocol, outbound, observability and
domain; not Keycloak or TikTok.
"""
