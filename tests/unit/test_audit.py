"""How the dependency audit (devstack/audit.py) reads pip-audit's report: holes are never "clean"."""

from __future__ import annotations

from devstack.audit import verdict

OK = {"name": "starlette", "version": "1.10.0", "vulns": []}
VULNERABLE = {"name": "jinja2", "version": "2.4.1", "vulns": [{"id": "PYSEC-2019-217"}]}
SKIPPED = {"name": "redis", "version": "8.1.0", "skip_reason": "Dependency not found on PyPI"}


def test_a_known_vulnerability_fails_and_is_named() -> None:
    passed, message = verdict([OK, VULNERABLE], "pypi", require=False)
    assert not passed
    assert "jinja2 2.4.1: PYSEC-2019-217" in message


def test_an_audit_with_holes_is_not_clean() -> None:
    passed, message = verdict([OK, SKIPPED], "pypi", require=False)
    assert not passed
    assert "redis" in message


def test_an_unreachable_service_is_reported_and_fails_only_when_required() -> None:
    for require in (False, True):
        passed, message = verdict([SKIPPED, SKIPPED], "pypi", require=require)
        assert passed is not require
        assert "NOT AUDITED" in message


def test_every_package_audited_without_findings_passes() -> None:
    assert verdict([OK, OK], "osv", require=True) == (
        True,
        "pip-audit: 2 locked packages, no known vulnerabilities",
    )
