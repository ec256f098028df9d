"""`python -m bridge` / `bridge`: serve, check the configuration, print the public JWKS."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from bridge import logs
from bridge.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Sequence


def _load_settings() -> Settings:
    try:
        return Settings.load()
    except ValidationError as exc:
        # Name the variables; never echo their values (they may be secrets).
        problems = "; ".join(
            f"BRIDGE_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        sys.exit(f"configuration error: {problems}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bridge", description="TikTok to Keycloak token exchange bridge")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (share the cache via Redis)")
    serve.add_argument(
        "--forwarded-allow-ips",
        default=None,
        help="proxies trusted to set X-Forwarded-For (the client IP used by rate limits); "
        "comma-separated addresses or networks. Default: none, forwarded headers are ignored",
    )
    serve.add_argument(
        "--admin-port",
        type=int,
        default=None,
        help="port of the admin listener (/metrics, detailed /readyz, /healthz) on the same host; "
        "0 switches it off (default: BRIDGE_ADMIN_PORT, 9000)",
    )
    serve.add_argument(
        "--limit-concurrency",
        type=int,
        default=None,
        help="connections (and requests) one worker holds at once; the next get 503 (default 256)",
    )
    commands.add_parser("check-config", help="validate the BRIDGE_* environment and exit")
    commands.add_parser("jwks", help="print the public JWKS (for a Keycloak IdP without a JWKS URL)")
    generate = commands.add_parser(
        "generate-key", help="write a new ES256 signing key (mode 0600) and print its kid; never overwrites"
    )
    generate.add_argument("path", type=Path)
    commands.add_parser(
        "generate-session-key",
        help="print a new key for BRIDGE_SESSION_ENCRYPTION_KEYS (put it first; keep the old ones after it)",
    )
    sessions = commands.add_parser("sessions", help="operate on bridge sessions")
    session_commands = sessions.add_subparsers(dest="session_command", required=True)
    end = session_commands.add_parser("end", help="end every session of one user, now")
    who = end.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="KEYCLOAK_USER_ID", help="the Keycloak user's id")
    who.add_argument("--open-id", metavar="OPEN_ID", help="the TikTok open_id")
    args = parser.parse_args(argv)

    if args.command == "generate-session-key":
        from bridge.sealing import new_key  # noqa: PLC0415

        print(new_key())  # noqa: T201
        return

    if args.command == "generate-key":
        # Needs no configuration: keys are made before the bridge is configured to use them.
        from bridge.assertions import load_key, write_new_key  # noqa: PLC0415

        try:
            created = write_new_key(args.path)
        except OSError as exc:
            # A missing or read-only directory is an operator's mistake: one line, not a traceback.
            sys.exit(f"cannot write a key to {args.path}: {exc.strerror or type(exc).__name__}")
        if not created:
            sys.exit(f"{args.path} exists; not overwriting a key")
        print(load_key(args.path).kid)  # noqa: T201
        return

    if args.command == "serve" and args.admin_port is not None:
        # The workers read their settings from the environment: the flag reaches them there.
        os.environ["BRIDGE_ADMIN_PORT"] = str(args.admin_port)
    settings = _load_settings()
    logs.configure(settings.log_level)
    if args.command == "check-config":
        print("configuration ok")  # noqa: T201
        return
    if args.command == "jwks":
        from bridge.assertions import signer_from_settings  # noqa: PLC0415 - loads keys only when asked

        print(json.dumps(signer_from_settings(settings).jwks(), indent=2))  # noqa: T201
        return

    if args.command == "sessions":
        import asyncio  # noqa: PLC0415

        from bridge.operator import end_sessions  # noqa: PLC0415

        sys.exit(asyncio.run(end_sessions(settings, user_id=args.user, open_id=args.open_id)))

    from bridge import server  # noqa: PLC0415 - only the server needs uvicorn

    server.serve(
        host=args.host,
        port=args.port,
        workers=args.workers,
        forwarded_allow_ips=args.forwarded_allow_ips,
        header_timeout=settings.client_header_timeout,
        limit_concurrency=args.limit_concurrency or server.DEFAULT_LIMIT_CONCURRENCY,
        admin_port=settings.admin_port,
    )


if __name__ == "__main__":
    main()
