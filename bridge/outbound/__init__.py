"""The one way out to upstreams: retries, the circuit breaker, the aiohttp transport under httpx2,
tracing.

May import the use cases' ports, protocol, observability and domain.
"""
