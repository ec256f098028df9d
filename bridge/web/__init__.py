"""The HTTP edge: the Starlette app, the RFC 8693 and RFC 7009 routes, the Strapi-compatible endpoint,
TikTok's webhook, linking, OpenAPI, and the server's connection limits.

May import operations (the verbose readiness runs the doctor's checks), the factory's per-process
clients and everything below; never the command line.
"""
