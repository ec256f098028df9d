"""`python -m bridge strapi import`: the TikTok users of a Strapi database into Keycloak, as the bridge's
service account, with a progress line and a summary; one line and exit status 1 when it cannot go on."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING

from bridge.services.strapi_import import DEFAULT_CONCURRENCY

if TYPE_CHECKING:
    import argparse

    from bridge.services.strapi_import import ImportSummary
    from bridge.settings import Settings

BAR_WIDTH = 30
# Without a terminal (a log, CI), one progress line at most this often.
LOG_INTERVAL = 5.0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    strapi = commands.add_parser("strapi", help="move users from the Strapi plugin 'TikTok Auth Mobile'")
    actions = strapi.add_subparsers(dest="strapi_command", required=True)
    run = actions.add_parser(
        "import",
        help="create one Keycloak user per TikTok user of a Strapi 4 or 5 database (idempotent)",
        description="Reads up_users (read only; never password hashes) and creates, through the bridge's "
        "service account, one Keycloak user per user of provider 'tiktok', in the bridge's group, keeping "
        "Strapi's id, document id, creation time and the union_id as attributes. Users of other providers "
        "are counted and skipped. Run it again at will: users imported already are left as they are.",
    )
    run.add_argument(
        "--database-url",
        required=True,
        help="sqlite:///absolute/path/to/data.db or postgresql://user@host:port/database "
        "(a password is better given in PGPASSWORD or ~/.pgpass than on the command line)",
    )
    run.add_argument("--dry-run", action="store_true", help="count what would be created; create nothing")
    run.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"Keycloak calls in flight at once (default {DEFAULT_CONCURRENCY}); fewer spare a busy Keycloak",
    )


class _Progress:
    def __init__(self, total: int) -> None:
        self._total = max(total, 1)
        self._started = time.monotonic()
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if not self._tty and now - self._last < LOG_INTERVAL and done < self._total:
            return
        self._last = now
        rate = done / max(now - self._started, 1e-6)
        filled = BAR_WIDTH * done // self._total
        line = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{self._total} users, {rate:.0f} users/s"
        print(f"\r{line}" if self._tty else line, end="" if self._tty else "\n", file=sys.stderr, flush=True)  # noqa: T201

    def close(self) -> None:
        if self._tty:
            print(file=sys.stderr)  # noqa: T201


def _report(summary: ImportSummary, seconds: float) -> str:
    skipped = ", ".join(f"{p or '(none)'}: {n}" for p, n in sorted(summary.skipped.items())) or "none"
    lines = [
        f"Strapi: {summary.tiktok_users} TikTok users; skipped users of other providers: {skipped}",
    ]
    verb = "would create" if summary.dry_run else "created"
    if summary.created == 0:
        lines.append(f"no changes: all {summary.already_imported} TikTok users are imported already")
    else:
        lines.append(
            f"{verb} {summary.created} Keycloak users ({summary.created_disabled} disabled: blocked in "
            f"Strapi); {summary.already_imported} imported already"
        )
    if seconds > 0 and summary.seen:
        lines.append(f"{summary.seen} users in {seconds:.1f} s ({summary.seen / seconds:.0f} users/s)")
    return "\n".join(lines)


def run_import(settings: Settings, args: argparse.Namespace) -> None:
    if args.concurrency < 1:
        sys.exit("strapi import: --concurrency must be 1 or more")
    sys.exit(
        asyncio.run(
            _run_import(settings, args.database_url, dry_run=args.dry_run, concurrency=args.concurrency)
        )
    )


async def _run_import(settings: Settings, url: str, *, dry_run: bool, concurrency: int) -> int:
    from bridge.domain.errors import BridgeError  # noqa: PLC0415
    from bridge.factory import Resources, policy_from_settings  # noqa: PLC0415
    from bridge.services.strapi_ids import HighWaterMark  # noqa: PLC0415
    from bridge.services.strapi_import import ImportRefused, StrapiImport  # noqa: PLC0415
    from bridge.storage.strapi_database import StrapiDatabaseError, open_strapi_database  # noqa: PLC0415

    try:
        database = open_strapi_database(url)
    except StrapiDatabaseError as exc:
        print(f"strapi import: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    try:
        resources = Resources.from_settings(settings)
    except (BridgeError, ValueError) as exc:
        database.close()
        print(f"strapi import: configuration: {getattr(exc, 'detail', None) or exc}", file=sys.stderr)  # noqa: T201
        return 1
    policy = policy_from_settings(settings)
    use_case = StrapiImport(
        source=database,
        keycloak=resources.keycloak,
        mark=HighWaterMark(resources.keycloak, groups=policy.default_groups),
        policy=policy,
        concurrency=concurrency,
    )
    started = time.monotonic()
    progress: _Progress | None = None

    def show(done: int, total: int) -> None:
        nonlocal progress
        if progress is None:
            progress = _Progress(total)
        progress(done)

    try:
        summary = await use_case.run(dry_run=dry_run, on_progress=show)
    except (ImportRefused, StrapiDatabaseError) as exc:
        message = str(exc)
    except BridgeError as exc:
        message = f"Keycloak: {exc.detail or exc}"
    else:
        message = ""
    finally:
        if progress is not None:
            progress.close()
        database.close()
        await resources.aclose()
    if message:
        print(f"strapi import: {message}", file=sys.stderr)  # noqa: T201
        return 1
    print(_report(summary, time.monotonic() - started))  # noqa: T201
    return 0
