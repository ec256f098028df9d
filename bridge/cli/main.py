"""The command line, `python -m bridge` / `bridge`: serve, check the configuration, print the public
JWKS, configure Keycloak (`keycloak apply`) and check a deployment (`doctor`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from bridge.cli import strapi
from bridge.observability import logs
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


def _parser() -> argparse.ArgumentParser:
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
    _add_session_commands(commands)
    _add_setup_commands(commands)
    strapi.add_commands(commands)
    return parser


def _add_session_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def _generate_key(path: Path) -> None:
    # Needs no configuration: keys are made before the bridge is configured to use them.
    from bridge.keycloak.assertions import load_key, write_new_key  # noqa: PLC0415

    try:
        created = write_new_key(path)
    except OSError as exc:
        # A missing or read-only directory is an operator's mistake: one line, not a traceback.
        sys.exit(f"cannot write a key to {path}: {exc.strerror or type(exc).__name__}")
    if not created:
        sys.exit(f"{path} exists; not overwriting a key")
    print(load_key(path).kid)  # noqa: T201


def _without_settings(args: argparse.Namespace) -> bool:
    """Run the commands that need no (or their own) configuration; True if one ran."""
    if args.command == "generate-session-key":
        from bridge.storage.sealing import new_key  # noqa: PLC0415

        print(new_key())  # noqa: T201
    elif args.command == "generate-key":
        _generate_key(args.path)
    elif args.command == "doctor":
        _doctor(args)
    else:
        return False
    return True


def _open_id_attached(argv: Sequence[str]) -> list[str]:
    """`--open-id -000abc` as `--open-id=-000abc`. TikTok's open_ids often begin with '-', which argparse
    takes for an option: `sessions end --open-id <open_id>`, as documented, was refused."""
    args = list(argv)
    for i, arg in enumerate(args[:-1]):
        if arg == "--open-id" and not args[i + 1].startswith("--"):
            return [*args[:i], f"--open-id={args[i + 1]}", *args[i + 2 :]]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(_open_id_attached(sys.argv[1:] if argv is None else argv))
    if _without_settings(args):
        return
    if args.command == "serve" and args.admin_port is not None:
        # The workers read their settings from the environment: the flag reaches them there.
        os.environ["BRIDGE_ADMIN_PORT"] = str(args.admin_port)
    settings = _load_settings()
    logs.configure(settings.log_level)
    if args.command == "keycloak":
        _keycloak_apply(settings, args)
        return
    if args.command == "strapi":
        strapi.run_import(settings, args)
        return
    if args.command == "check-config":
        print("configuration ok")  # noqa: T201
        return
    if args.command == "jwks":
        from bridge.keycloak.assertions import signer_from_settings  # noqa: PLC0415 - loads keys only when asked

        print(json.dumps(signer_from_settings(settings).jwks(), indent=2))  # noqa: T201
        return
    if args.command == "sessions":
        import asyncio  # noqa: PLC0415

        from bridge.operations.operator import end_sessions  # noqa: PLC0415

        sys.exit(asyncio.run(end_sessions(settings, user_id=args.user, open_id=args.open_id)))

    from bridge.web import server  # noqa: PLC0415 - only the server needs uvicorn

    server.serve(
        host=args.host,
        port=args.port,
        workers=args.workers,
        forwarded_allow_ips=args.forwarded_allow_ips,
        header_timeout=settings.client_header_timeout,
        limit_concurrency=args.limit_concurrency or server.DEFAULT_LIMIT_CONCURRENCY,
        admin_port=settings.admin_port,
    )


def _add_setup_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keycloak = commands.add_parser("keycloak", help="configure Keycloak for the bridge")
    actions = keycloak.add_subparsers(dest="action", required=True)
    apply = actions.add_parser(
        "apply",
        help="configure the realm of BRIDGE_KEYCLOAK_REALM on a running Keycloak (idempotent)",
        description="Creates the identity provider, client, service-account roles and user-profile "
        "attributes the bridge needs; refuses conflicts unless --force. Admin credentials are used "
        "for this run only.",
    )
    apply.add_argument("--admin-user", required=True, help="a Keycloak administrator")
    apply.add_argument(
        "--admin-password-file", type=Path, help="file holding the password (else a prompt on a terminal)"
    )
    apply.add_argument("--admin-realm", default="master", help="the administrator's realm (default master)")
    apply.add_argument(
        "--jwks-url",
        help="where Keycloak fetches the bridge's keys (default BRIDGE_ISSUER/.well-known/jwks.json); "
        "e.g. an internal address",
    )
    apply.add_argument("--dry-run", action="store_true", help="show what would change; change nothing")
    apply.add_argument(
        "--force",
        action="store_true",
        help="overwrite conflicting objects: the settings listed as conflicts, a provider of another "
        "type under the alias (deleted, with its user links), extra realm-management roles of the "
        "service account (removed)",
    )
    doctor = commands.add_parser(
        "doctor",
        help="check this deployment end to end, one line per check",
        description="Uses the bridge's own settings. With --admin-user it also reads the realm's objects "
        "and names the exact setting that differs from what `keycloak apply` makes.",
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable report")
    doctor.add_argument("--admin-user", help="optional: a Keycloak administrator, for the realm checks")
    doctor.add_argument(
        "--admin-password-file", type=Path, help="file holding the password (else a prompt on a terminal)"
    )
    doctor.add_argument("--admin-realm", default="master", help="the administrator's realm (default master)")


def _admin_password(args: argparse.Namespace) -> str:
    if args.admin_password_file is not None:
        try:
            return str(args.admin_password_file.read_text()).rstrip("\r\n")
        except OSError as exc:
            sys.exit(f"cannot read {args.admin_password_file}: {exc.strerror or type(exc).__name__}")
    if not sys.stdin.isatty():
        sys.exit("no admin password: give --admin-password-file, or run on a terminal to be asked")
    import getpass  # noqa: PLC0415

    return getpass.getpass(f"Keycloak password of {args.admin_user}: ")


def _keycloak_apply(settings: Settings, args: argparse.Namespace) -> None:
    from bridge.domain.errors import SetupError  # noqa: PLC0415
    from bridge.keycloak.realm_setup import apply  # noqa: PLC0415

    password = _admin_password(args)
    try:
        done = apply(
            settings,
            admin_user=args.admin_user,
            admin_password=password,
            admin_realm=args.admin_realm,
            jwks_url=args.jwks_url,
            dry_run=args.dry_run,
            force=args.force,
            out=lambda line: print(line, flush=True),  # noqa: T201 - progress per object
        )
    except SetupError as exc:
        sys.exit(f"keycloak apply: {exc}")
    if not done:
        sys.exit(1)


def _doctor(args: argparse.Namespace) -> None:
    import asyncio  # noqa: PLC0415

    from bridge.operations.doctor import AdminLogin, Check, report, run_checks  # noqa: PLC0415

    admin = None
    if args.admin_user:
        admin = AdminLogin(args.admin_user, _admin_password(args), args.admin_realm)
    try:
        settings = Settings.load()
    except ValidationError as exc:
        names = ", ".join(f"BRIDGE_{'_'.join(str(p) for p in e['loc']).upper()}" for e in exc.errors())
        checks = [Check("settings", ok=False, detail=f"invalid: {names}", fix="Run `bridge check-config`.")]
    else:
        checks = asyncio.run(run_checks(settings, admin=admin))
    print(report(checks, as_json=args.json))  # noqa: T201
    sys.exit(0 if all(c.ok for c in checks) else 1)
