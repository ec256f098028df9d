"""TikTok's Login Kit and Open API: the client that redeems codes, reads profiles, refreshes and
revokes.
"""
