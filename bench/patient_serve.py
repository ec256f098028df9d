"""`python -m bridge serve` for the benchmark, with uvicorn's supervisor more patient with new workers.

uvicorn (0.54) kills a worker that has not answered its health ping within `timeout_worker_healthcheck`
(5 s), and a spawned worker answers only after it has imported the app. On this project's two shared
cores, with test suites running beside the benchmark, that import can take longer: the supervisor then
kills and respawns workers in a loop and `--workers 2` never serves. `bridge serve` has no option for it,
so the benchmark raises the default to 60 s here; everything else is the production entry point.
(Proposed hook, in bridge/: a `serve --worker-healthcheck-timeout` option or a larger default.)

    python -m bench.patient_serve serve --port P --workers N
"""

from __future__ import annotations

import uvicorn.config

from bridge.__main__ import main

PATIENCE_SECONDS = 60
_original_init = uvicorn.config.Config.__init__


def _patient_init(self: uvicorn.config.Config, *args: object, **kwargs: object) -> None:
    # uvicorn.run passes its own default (5) explicitly, so the value is raised, not defaulted.
    given = kwargs.get("timeout_worker_healthcheck", 5)
    kwargs["timeout_worker_healthcheck"] = max(int(given) if isinstance(given, int) else 5, PATIENCE_SECONDS)
    _original_init(self, *args, **kwargs)  # type: ignore[arg-type]


uvicorn.config.Config.__init__ = _patient_init  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
