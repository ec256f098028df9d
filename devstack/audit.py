"""`python -m devstack.audit`: pip-audit over the locked runtime and dev dependencies, read strictly.

pip-audit reports a package it could not look up as skipped, not as a failure, so a run where the
vulnerability service is unreachable looks clean. This reads its JSON report instead:

- any known vulnerability: fail;
- some packages audited, others skipped: fail (an audit with holes is not clean);
- nothing audited at all: pip-audit's services are unreachable from this machine (a PyPI route without
  the per-release JSON API, and none to OSV). Then fall back to PyPI's per-project JSON
  (`/pypi/NAME/json`), whose `vulnerabilities` are those of the project's *latest* release: exact for
  every locked package at its latest release, silent on the others. Any vulnerability listed fails;
  packages it cannot speak for are named, and fail the run only with `--require`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2
from packaging.requirements import Requirement

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent
PYPI = "https://pypi.org"


def locked_requirements(uv: str) -> str:
    """Every locked package (runtime, otel and dev extras) as pinned requirements, without the project."""
    return subprocess.run(
        [uv, "export", "--frozen", "--no-hashes", "--no-emit-project", "--extra", "dev", "--quiet"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def audit(requirements: str, service: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as handle:
        handle.write(requirements)
        handle.flush()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip_audit",
                "--requirement",
                handle.name,
                "--no-deps",  # the export is the complete, pinned set
                "--disable-pip",
                "--vulnerability-service",
                service,
                "--format",
                "json",
                "--progress-spinner",
                "off",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        sys.exit(f"pip-audit failed: {result.stderr.strip()[-2000:]}")
    return report


def nothing_audited(dependencies: list[dict[str, Any]]) -> bool:
    """pip-audit reached no vulnerability service: every package skipped."""
    return bool(dependencies) and all(d.get("skip_reason") for d in dependencies)


def vulnerabilities_found(source: str, vulnerable: list[dict[str, Any]]) -> str:
    """The failure message naming each vulnerable pin and its advisories."""
    found = "; ".join(
        f"{d['name']} {d['version']}: {', '.join(v['id'] for v in d['vulns'])}" for d in vulnerable
    )
    return f"{source}: known vulnerabilities in {len(vulnerable)} locked packages: {found}"


def verdict(dependencies: list[dict[str, Any]], service: str, *, require: bool) -> tuple[bool, str]:
    """(passed, message) for pip-audit's per-dependency results."""
    vulnerable = [d for d in dependencies if d.get("vulns")]
    skipped = [d for d in dependencies if d.get("skip_reason")]
    audited = len(dependencies) - len(skipped)
    if vulnerable:
        return False, vulnerabilities_found("pip-audit", vulnerable)
    if nothing_audited(dependencies):
        message = (
            f"pip-audit: NOT AUDITED. The {service} vulnerability service answered for none of the "
            f"{len(dependencies)} locked packages (first reason: {skipped[0]['skip_reason']})"
        )
        return not require, message
    if skipped:
        names = ", ".join(d["name"] for d in skipped[:10])
        return False, f"pip-audit: {len(skipped)} packages could not be audited: {names}"
    return True, f"pip-audit: {audited} locked packages, no known vulnerabilities"


def pinned(requirements: str) -> list[tuple[str, str]]:
    """(name, version) of each pin of an export that applies to this interpreter, as pip-audit counts."""
    pins = []
    for line in requirements.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate():
            (specifier,) = requirement.specifier  # the export pins each package with exactly one ==
            pins.append((requirement.name, specifier.version))
    return pins


def project_json(name: str) -> dict[str, Any]:
    """PyPI's JSON for a project (latest release); raises httpx2.HTTPError or ValueError."""
    response = httpx2.get(f"{PYPI}/pypi/{name}/json", timeout=30, follow_redirects=True)
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


def latest_release_audit(
    pins: list[tuple[str, str]], fetch: Callable[[str], dict[str, Any]] = project_json
) -> list[dict[str, Any]]:
    """pip-audit-shaped results from PyPI's per-project advisories: `vulns` for every listed
    vulnerability, `skip_reason` where the answer cannot speak for the locked version."""

    def one(pin: tuple[str, str]) -> dict[str, Any]:
        name, version = pin
        try:
            project = fetch(name)
            latest = project["info"]["version"]
            vulns = [{"id": v["id"]} for v in project.get("vulnerabilities") or []]
        except (httpx2.HTTPError, ValueError, KeyError, TypeError) as exc:
            return {
                "name": name,
                "version": version,
                "skip_reason": f"no answer from PyPI ({type(exc).__name__})",
            }
        # A vulnerability of the latest release is counted against an older pin too: it is unfixed.
        if vulns:
            return {"name": name, "version": version, "vulns": vulns}
        if latest != version:
            return {"name": name, "version": version, "skip_reason": f"behind its latest release {latest}"}
        return {"name": name, "version": version, "vulns": []}

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, pins))


def fallback_verdict(dependencies: list[dict[str, Any]], *, require: bool) -> tuple[bool, str]:
    """(passed, message) for the latest-release audit: its holes are the machine's, not the lock's."""
    vulnerable = [d for d in dependencies if d.get("vulns")]
    skipped = [d for d in dependencies if d.get("skip_reason")]
    if vulnerable:
        return False, vulnerabilities_found("PyPI advisories", vulnerable)
    message = (
        f"PyPI advisories of latest releases: {len(dependencies) - len(skipped)} of {len(dependencies)} "
        "locked packages audited, no known vulnerabilities"
    )
    if skipped:
        holes = ", ".join(f"{d['name']} {d['version']} ({d['skip_reason']})" for d in skipped)
        return not require, f"{message}; NOT AUDITED: {holes}"
    return True, message


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--uv", default="uv", help="the uv executable")
    parser.add_argument("--service", default="pypi", choices=["pypi", "osv"])
    parser.add_argument("--require", action="store_true", help="fail when no vulnerability service answers")
    args = parser.parse_args()

    requirements = locked_requirements(args.uv)
    dependencies = audit(requirements, args.service).get("dependencies", [])
    passed, message = verdict(dependencies, args.service, require=args.require)
    if nothing_audited(dependencies):
        print(f"WARNING {message}; falling back to PyPI's per-project advisories", file=sys.stderr)
        passed, message = fallback_verdict(latest_release_audit(pinned(requirements)), require=args.require)
    if not passed:
        sys.exit(message)
    print(message if "NOT AUDITED" not in message else f"WARNING {message}", file=sys.stderr)


if __name__ == "__main__":
    main()
