"""Keycloak: the Admin REST and token-endpoint client, the bridge's assertions, verifying realm bearer
tokens, and the realm the bridge needs (`realm_spec`, `realm_setup`: `keycloak apply`).

May import outbound, the use cases' ports, protocol, observability and domain; not the identity
providers or storage.
"""
