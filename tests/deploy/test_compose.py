"""docker-compose.yml checked offline (no Docker daemon here): the whole file against the Compose
Specification's JSON schema, and the `postgres` profile for what makes it Keycloak as production runs it.

`compose-spec.json` beside this file is the Compose Specification's schema (Apache-2.0, The Compose
Specification Authors; upstream in compose-spec/compose-go, `schema/compose-spec.json`), copied byte for
byte from the npm package dclint 3.1.0 (MIT), `schemas/compose.schema.json`, sha256
46b7d35f19dd93a05f8fea530291bf84d881c1791ec167ecf0e6fb94e639d496. To update it, take the file from a newer
dclint (`npm pack dclint@VERSION`) and say which here.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from devstack.keycloak import KEYCLOAK_VERSION

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = Path(__file__).with_name("compose-spec.json")


@cache
def validator() -> Draft7Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def compose() -> dict[str, Any]:
    """The file as Compose reads it: YAML anchors and merge keys resolved, `${...}` left as text."""
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def problems(document: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator().iter_errors(document)
    ]


def test_docker_compose_file_follows_the_compose_specification() -> None:
    """Every service, volume and profile of docker-compose.yml validates against the schema."""
    assert problems(compose()) == []


@pytest.mark.parametrize(
    ("service", "field", "value"),
    [
        ("keycloak-postgres", "profile", ["postgres"]),  # misspelt: it is `profiles`
        ("postgres", "healthcheck", {"test": ["CMD", "pg_isready"], "intervall": "5s"}),
        ("keycloak-postgres", "depends_on", {"postgres": {"condition": "healthy"}}),
    ],
)
def test_the_schema_catches_a_mistake(service: str, field: str, value: object) -> None:
    """A misspelt key or an unknown value fails validation: the check above is not vacuous."""
    document = copy.deepcopy(compose())
    document["services"][service][field] = value
    assert problems(document) != []


def test_postgres_profile_runs_keycloak_in_production_mode_on_postgresql() -> None:
    """`--profile postgres` adds Keycloak (`start`, the pinned release) with KC_DB=postgres, pointed at
    the profile's PostgreSQL server with the credentials that server is created with, started once it
    is healthy; without the profile neither starts."""
    services = compose()["services"]
    keycloak, postgres = services["keycloak-postgres"], services["postgres"]
    assert keycloak["profiles"] == postgres["profiles"] == ["postgres"]
    pinned = f"quay.io/keycloak/keycloak:{KEYCLOAK_VERSION}"
    assert keycloak["image"] == services["keycloak"]["image"] == pinned
    assert re.fullmatch(r"postgres:1[4-8]", postgres["image"]), "a major Keycloak 26 supports"
    assert keycloak["command"][0] == "start"
    assert "--import-realm" in keycloak["command"]
    assert "--features=jwt-authorization-grant" in keycloak["command"]
    env, db = keycloak["environment"], postgres["environment"]
    assert env["KC_DB"] == "postgres"
    assert env["KC_DB_URL"] == f"jdbc:postgresql://postgres:5432/{db['POSTGRES_DB']}"
    assert env["KC_DB_USERNAME"] == db["POSTGRES_USER"]
    assert env["KC_DB_PASSWORD"] == db["POSTGRES_PASSWORD"]
    assert keycloak["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    # The realm's variables are the development Keycloak's: both import keycloak-config/ alike.
    assert {k: v for k, v in env.items() if not k.startswith("KC_DB")} == services["keycloak"]["environment"]
    assert "ports" not in postgres, "the database is reached over the compose network only"
    assert "postgres-data" in compose()["volumes"]
