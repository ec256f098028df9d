"""`python -m devstack.audit`: pip-audit over the locked runtime and dev dependencies, read strictly.

pip-audit reports a package it could not look up as skipped, not as a failure, so a run where the
vulnerability service is unreachable looks clean. This reads its JSON report instead:

- any known vulnerability: fail;
- some packages audited, others skipped: fail (an audit with holes is not clean);
- nothing audited at all: the service is unreachable from this machine (e.g. a PyPI mirror without
  the per-release JSON API, and no route to OSV). Say so loudly; fail only with `--require`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


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


def verdict(dependencies: list[dict[str, Any]], service: str, *, require: bool) -> tuple[bool, str]:
    """(passed, message) for pip-audit's per-dependency results."""
    vulnerable = [d for d in dependencies if d.get("vulns")]
    skipped = [d for d in dependencies if d.get("skip_reason")]
    audited = len(dependencies) - len(skipped)
    if vulnerable:
        found = "; ".join(
            f"{d['name']} {d['version']}: {', '.join(v['id'] for v in d['vulns'])}" for d in vulnerable
        )
        return False, f"pip-audit: known vulnerabilities in {len(vulnerable)} locked packages: {found}"
    if dependencies and audited == 0:
        message = (
            f"pip-audit: NOT AUDITED. The {service} vulnerability service answered for none of the "
            f"{len(dependencies)} locked packages (first reason: {skipped[0]['skip_reason']})"
        )
        return not require, message
    if skipped:
        names = ", ".join(d["name"] for d in skipped[:10])
        return False, f"pip-audit: {len(skipped)} packages could not be audited: {names}"
    return True, f"pip-audit: {audited} locked packages, no known vulnerabilities"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--uv", default="uv", help="the uv executable")
    parser.add_argument("--service", default="pypi", choices=["pypi", "osv"])
    parser.add_argument("--require", action="store_true", help="fail when no vulnerability service answers")
    args = parser.parse_args()

    report = audit(locked_requirements(args.uv), args.service)
    passed, message = verdict(report.get("dependencies", []), args.service, require=args.require)
    if not passed:
        sys.exit(message)
    print(message if "NOT AUDITED" not in message else f"WARNING {message}", file=sys.stderr)


if __name__ == "__main__":
    main()
