"""OAuth wire formats: RFC 6749 and RFC 8693 request parsing and answers, RFC 9449 DPoP proofs, client
authentication.

May import observability and domain only.
"""
