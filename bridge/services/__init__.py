"""The use cases: the token exchange and the steps it composes (identity verification, provisioning,
minting), deauthorization, sessions, linking, per-app dispatch, and the ports (protocols) they know
their collaborators by.

No HTTP, Redis or web library is imported by anything here (an import-linter contract and a test
hold it); may import protocol, observability and domain only.
"""
