"""The command line: serve, check the configuration, keys, `keycloak apply`, `doctor`, sessions.

May import every layer below it; nothing imports it but `bridge.__main__`.
"""
