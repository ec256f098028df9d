"""Contract fuzzing of the served bridge: schemathesis drives every operation of /openapi.json, and
hypothesis tests send what a schema cannot describe (wrong content types, repeated parameters, invalid
UTF-8, huge and empty values; realm tokens and Strapi jwts forged, expired or of another realm, client
authentication malformed or doubled). Real Keycloak and Redis behind the bridge, TikTok emulated.

The bridge serves everything there is to fuzz: a client allow-list with a public client and two
confidential ones, one of them the token vault's, and the Strapi jwt exchange. Schemathesis
authenticates part of its cases as those clients (`contract_fuzzing_hooks.py`), and the test counts, in
the bridge's metrics and log, that the vault's and the Strapi jwt's own refusals happened.

Budget: bounded in the normal test command; `scripts/test --hypothesis-profile=long` raises all of it.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_from_bytes, urlencode

import httpx2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import OctKey
from jsonschema import Draft202012Validator
from prometheus_client.parser import text_string_to_metric_families

from devstack.threaded import ThreadedServer
from tests.conftest import ADMIN_URLS, CLIENT_KEY, CLIENT_SECRET, KNOWN_SECRETS, start_bridge_process
from tests.unit.test_webhook_signature import sign

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.conftest import Stack

POST_PATHS = (
    "/token",
    "/revoke",
    "/api/tiktok-auth-mobile/connect",
    "/webhooks/tiktok",
    "/account/links/tiktok",
)


ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
TIKTOK_ACCESS_TOKEN_TYPE = "urn:tiktok-keycloak-bridge:params:oauth:token-type:tiktok-access-token"
STRAPI_JWT_TYPE = "urn:tiktok-keycloak-bridge:params:oauth:token-type:strapi-jwt"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
# Loaded by schemathesis only (importing it registers its authentication for the process); it reads the
# clients from this variable.
HOOKS = Path(__file__).with_name("contract_fuzzing_hooks.py")
CLIENTS_VARIABLE = "CONTRACT_FUZZING_CLIENTS"

# The clients of the fuzzed bridge: the vault's backend, a backend outside the vault, a mobile app.
VAULT_CLIENT, OTHER_CLIENT, PUBLIC_CLIENT = "vault-backend", "reporting-backend", "mobile-app"
CLIENT_SECRETS = {VAULT_CLIENT: secrets.token_urlsafe(24), OTHER_CLIENT: secrets.token_urlsafe(24)}
STRAPI_JWT_SECRET = secrets.token_urlsafe(32)
KNOWN_SECRETS.update({*CLIENT_SECRETS.values(), STRAPI_JWT_SECRET})
# Realm clients whose users' tokens the hostile vault requests carry: the vault's backend may present
# the first and the last (whose tokens live one second), not the second.
SUBJECT_APP, OTHER_APP, EXPIRING_APP = "contract-fuzz-app", "contract-fuzz-other", "contract-fuzz-expiring"
REALM_TOKEN_LEEWAY = 5  # bridge.keycloak.bearer.LEEWAY: an expired token is refused this long after exp


@dataclass(frozen=True)
class Served:
    url: str
    admin: str
    log: Path


def long_budget(config: pytest.Config) -> bool:
    return bool(config.getoption("hypothesis_profile", None) == "long")


@pytest.fixture(scope="module")
def served(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from devstack.tiktok_emulator import TikTokEmulator  # noqa: PLC0415

    emulator = TikTokEmulator(client_key=CLIENT_KEY, client_secret=CLIENT_SECRET)
    tiktok = ThreadedServer(emulator.app)
    tiktok.start()
    log = tmp_path_factory.mktemp("fuzzing") / "bridge.log"
    process, base = start_bridge_process(
        stack,
        log_file=log,
        BRIDGE_TIKTOK_API_URL=tiktok.url,
        BRIDGE_RATE_LIMIT_ENABLED="false",  # a 429 would stop requests reaching the code under test
        BRIDGE_TIKTOK_REDIRECT_URIS="https://app.example/callback",
        BRIDGE_DEAUTHORIZATION_POLICY="disable",
        BRIDGE_LINK_CLIENT_IDS="account-app",  # serves (and so fuzzes) /account/links/tiktok
        BRIDGE_AUDIENCES="https://orders.example=aud-orders-api",
        BRIDGE_PUBLIC_CLIENT_IDS=PUBLIC_CLIENT,
        BRIDGE_CONFIDENTIAL_CLIENTS=",".join(
            f"{client}={secret}" for client, secret in CLIENT_SECRETS.items()
        ),
        BRIDGE_VAULT_CLIENT_IDS=VAULT_CLIENT,
        BRIDGE_VAULT_SUBJECT_CLIENTS=f"{VAULT_CLIENT}={SUBJECT_APP} {EXPIRING_APP}",
        BRIDGE_VAULT_SCOPES=f"{VAULT_CLIENT}=user.info.basic video.list",
        BRIDGE_STRAPI_JWT_SECRET=STRAPI_JWT_SECRET,
    )
    yield Served(url=base, admin=ADMIN_URLS[base], log=log)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    tiktok.stop()


@pytest.fixture(scope="module")
def spec(served: Served) -> dict[str, Any]:
    document: dict[str, Any] = httpx2.get(f"{served.url}/openapi.json").json()
    return document


def vault_answers(served: Served) -> Counter[tuple[str, str]]:
    """bridge_vault_answers_total by (client, outcome), read from the admin listener's metrics."""
    answers: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(httpx2.get(f"{served.admin}/metrics").text):
        for sample in family.samples:
            if sample.name == "bridge_vault_answers_total":
                answers[sample.labels["client"], sample.labels["outcome"]] += int(sample.value)
    return answers


def log_records(served: Served, offset: int = 0) -> list[dict[str, Any]]:
    """The bridge's JSON log records from byte `offset` of its log on."""
    with served.log.open("rb") as log:
        log.seek(offset)
        lines = log.read().decode(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_schemathesis_finds_no_server_error_and_no_contract_break(
    served: Served, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    """Every operation, positive and negative data, every schemathesis check: no 5xx, no undocumented
    status, content type, header or body; and the cases authenticated as the vault's client reached
    the vault's own checks, and the Strapi jwt cases the jwt's verification (counted by the bridge)."""
    examples = 5000 if long_budget(pytestconfig) else 500
    report = tmp_path / "schemathesis.json"
    vault_before, log_offset = vault_answers(served), served.log.stat().st_size
    clients = {
        "vault": [VAULT_CLIENT, CLIENT_SECRETS[VAULT_CLIENT]],
        "other": [OTHER_CLIENT, CLIENT_SECRETS[OTHER_CLIENT]],
        "public": PUBLIC_CLIENT,
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{served.url}/openapi.json",
            "--url",
            served.url,
            "--checks",
            "all",
            # A schema-valid request may rightly be refused: its TikTok token is made up, so TikTok
            # (the emulator) says no and the bridge answers 400. Acceptance depends on TikTok's state.
            "--exclude-checks",
            "positive_data_acceptance",
            "--mode",
            "all",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            str(examples),
            "--workers",
            "2",
            "--generation-database",
            "none",
            "--report",
            "json,ndjson",
            "--report-json-path",
            str(report),
            "--report-ndjson-path",
            str(tmp_path / "schemathesis.ndjson"),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS), CLIENTS_VARIABLE: json.dumps(clients)},
    )
    summary = run.stdout[-4000:]
    assert run.returncode == 0, summary + run.stderr[-2000:]
    counts = json.loads(report.read_text())["test_cases"]
    vault = vault_answers(served) - vault_before
    records = log_records(served, log_offset)
    strapi_refused = sum(record["msg"] == "strapi jwt refused" for record in records)
    print(  # noqa: T201
        f"schemathesis: {counts['generated']} cases, {counts['with_failures']} failing; "
        f"vault answers {dict(vault)}; strapi jwts refused {strapi_refused}"
    )
    assert counts["generated"] >= 12 * 20  # every operation really exercised, not skipped
    # Past client authentication into the vault's own checks (the subject token is made up).
    assert vault[VAULT_CLIENT, "invalid_request"] > 0, vault
    assert vault["unauthenticated", "invalid_client"] > 0, vault
    # Past client authentication and the form into the Strapi jwt's verification.
    assert strapi_refused > 0


# What a schema cannot say: the transport-level shapes of hostile requests.
CONTENT_TYPES = st.sampled_from(
    [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=utf-8",
        "application/x-www-form-urlencoded; charset=latin-1",
        "application/json",
        "text/plain",
        "multipart/form-data; boundary=x",
        "",
        "application/x-www-form-urlencoded, application/json",
    ]
)
PARAMETERS = st.sampled_from(
    [
        "grant_type",
        "subject_token",
        "subject_token_type",
        "scope",
        "code_verifier",
        "redirect_uri",
        "refresh_token",
        "token",
        "token_type_hint",
        "audience",
        "resource",
        "requested_token_type",
        "client_id",
        "client_secret",
        "x",
    ]
)
VALUES = st.one_of(
    st.binary(max_size=64),  # percent-encoded as is: invalid UTF-8 included
    st.just(b""),
    st.just(b"urn:ietf:params:oauth:grant-type:token-exchange"),
    st.just(b"urn:ietf:params:oauth:token-type:access_token"),
    st.just(b"urn:ietf:params:oauth:grant-type:unknown"),
    st.just(b"urn:ietf:params:oauth:token-type:saml2"),
    st.just(b"refresh_token"),
    st.just(TIKTOK_ACCESS_TOKEN_TYPE.encode()),
    st.just(STRAPI_JWT_TYPE.encode()),
    st.sampled_from([VAULT_CLIENT, OTHER_CLIENT, PUBLIC_CLIENT]).map(str.encode),
    st.just(b"tkb1.AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"),
    st.integers(min_value=1, max_value=20_000).map(lambda n: b"a" * n),  # huge values, past the body limit
)
FORMS = st.lists(st.tuples(PARAMETERS, VALUES), max_size=8).map(
    lambda pairs: "&".join(f"{name}={quote_from_bytes(value)}" for name, value in pairs).encode()
)
# TikTok's event envelope with hostile values (the webhook's parser is behind the signature check).
WEBHOOK_EVENTS = st.fixed_dictionaries(
    {
        "client_key": st.one_of(st.just(CLIENT_KEY), st.text(max_size=20)),
        "event": st.one_of(st.just("authorization.removed"), st.text(max_size=30), st.integers()),
        "create_time": st.one_of(st.integers(), st.text(max_size=12), st.none()),
        "user_openid": st.one_of(st.text(max_size=80), st.integers(), st.none()),
        "content": st.one_of(st.text(max_size=200), st.just('{"reason": 1}'), st.none(), st.integers()),
    }
).map(lambda event: json.dumps(event).encode())
BODIES = st.one_of(FORMS, st.binary(max_size=512), st.builds(lambda n: b"{" * n, st.integers(0, 5000)))


@pytest.mark.parametrize("path", POST_PATHS)
def test_hostile_requests_get_documented_answers(
    served: Served, spec: dict[str, Any], path: str, pytestconfig: pytest.Config
) -> None:
    """Any content type and body (repeated and unknown parameters, raw bytes, invalid UTF-8, empty and
    oversized values): a JSON answer with a status the OpenAPI document lists, never a 5xx."""
    documented = set(spec["paths"][path]["post"]["responses"])

    @settings(
        max_examples=5000 if long_budget(pytestconfig) else 400,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(content_type=CONTENT_TYPES, body=st.one_of(BODIES, WEBHOOK_EVENTS), signed=st.booleans())
    def check(content_type: str, body: bytes, signed: bool) -> None:
        headers = {"content-type": content_type} if content_type else {}
        if signed and path == "/webhooks/tiktok":
            # Past the signature check, so the hostile body reaches the event parser.
            headers["TikTok-Signature"] = sign(body, int(time.time()), CLIENT_SECRET)
        response = http.post(path, content=body, headers=headers)
        assert response.status_code < 500, (response.status_code, response.text)
        assert str(response.status_code) in documented, (response.status_code, response.text)
        if path == "/revoke" and response.status_code == 200:
            assert response.content == b""  # RFC 7009 §2.2: the body carries nothing
            return
        assert response.headers["content-type"].startswith("application/json")
        json.loads(response.content)

    with httpx2.Client(base_url=served.url, timeout=30) as http:
        check()


# ------------------------------------------------------------- the vault's and the Strapi jwt's parameters
# Hostile values of what the vault and the Strapi jwt exchange read: realm tokens and jwts forged,
# expired, of another realm, huge; client authentication malformed, doubled, or of the wrong client.


@dataclass(frozen=True)
class RealmTokens:
    """Real access tokens of Keycloak, none of which the vault may answer with a TikTok token."""

    presentable: str  # a realm user (in the bridge's group) without any TikTok grant held
    outside_group: str  # a realm user the bridge's service account may not read
    other_client: str  # issued to a realm client the vault's backend may not present
    expired: str  # of a client whose tokens live one second, past its expiry
    other_realm: str  # Keycloak's master realm


def _realm_client(admin: httpx2.Client, client_id: str, **attributes: str) -> str:
    """A public client of the realm with direct access grants; its internal id."""
    created = admin.post(
        "/clients",
        json={
            "clientId": client_id,
            "publicClient": True,
            "directAccessGrantsEnabled": True,
            "standardFlowEnabled": False,
            "attributes": attributes,
        },
    )
    assert created.status_code in {201, 409}, created.text
    found: list[dict[str, Any]] = admin.get("/clients", params={"clientId": client_id}).json()
    return str(found[0]["id"])


def _realm_user(admin: httpx2.Client, *, in_group: bool) -> tuple[str, str, str]:
    """(id, username, password) of a new enabled realm user with a password and no TikTok link."""
    username, password = f"fuzz-{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    created = admin.post(
        "/users",
        json={
            "username": username,
            "enabled": True,
            "credentials": [{"type": "password", "value": password, "temporary": False}],
            "groups": ["/tiktok-users"] if in_group else [],
        },
    )
    assert created.status_code == 201, created.text
    return created.headers["Location"].rsplit("/", 1)[1], username, password


def _password_grant(stack: Stack, username: str, password: str, client_id: str, realm: str) -> str:
    answer = httpx2.post(
        f"{stack.keycloak.url}/realms/{realm}/protocol/openid-connect/token",
        data={"grant_type": "password", "client_id": client_id, "username": username, "password": password},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["access_token"]
    return token


@pytest.fixture(scope="module")
def realm_tokens(stack: Stack) -> Iterator[RealmTokens]:
    with stack.admin() as admin:
        clients = [
            _realm_client(admin, SUBJECT_APP),
            _realm_client(admin, OTHER_APP),
            _realm_client(admin, EXPIRING_APP, **{"access.token.lifespan": "1"}),
        ]
        member = _realm_user(admin, in_group=True)
        outsider = _realm_user(admin, in_group=False)
        expired = _password_grant(stack, *member[1:], EXPIRING_APP, stack.realm)
        expires_at = _claims(expired)["exp"]
        tokens = RealmTokens(
            presentable=_password_grant(stack, *member[1:], SUBJECT_APP, stack.realm),
            outside_group=_password_grant(stack, *outsider[1:], SUBJECT_APP, stack.realm),
            other_client=_password_grant(stack, *member[1:], OTHER_APP, stack.realm),
            expired=expired,
            other_realm=_password_grant(
                stack, stack.keycloak.admin_username, stack.keycloak.admin_password, "admin-cli", "master"
            ),
        )
        assert expires_at - _claims(expired)["iat"] <= 2  # the one-second client's token
        time.sleep(max(0.0, expires_at + REALM_TOKEN_LEEWAY + 1 - time.time()))
        yield tokens
        for user_id in (member[0], outsider[0]):
            admin.delete(f"/users/{user_id}")
        for client in clients:
            admin.delete(f"/clients/{client}")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json_part(part: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def _claims(token: str) -> dict[str, Any]:
    return _json_part(token.split(".")[1])


def _forged(token: str) -> list[str]:
    """A realm token altered: payload changed under the old signature, signature changed, `alg: none`."""
    header, payload, signature = token.split(".")
    claims = _claims(token)
    longer = _b64(json.dumps({**claims, "exp": claims["exp"] + 86400}).encode())
    other_user = _b64(json.dumps({**claims, "sub": "00000000-0000-0000-0000-000000000000"}).encode())
    flipped = signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")
    unsigned = _b64(json.dumps({**_json_part(header), "alg": "none"}).encode())
    return [
        f"{header}.{longer}.{signature}",
        f"{header}.{other_user}.{signature}",
        f"{header}.{payload}.{flipped}",
        f"{unsigned}.{payload}.",
        f"{unsigned}.{payload}.{signature}",
    ]


Headers = list[tuple[bytes, bytes]]
ClientAuthentication = tuple[Headers, list[tuple[str, str]]]


def _basic(credentials: bytes) -> Headers:
    return [(b"authorization", b"Basic " + base64.b64encode(credentials))]


def _client_authentications() -> list[ClientAuthentication]:
    """(headers, form pairs) of every way a client authenticates or fails to: the vault's backend in
    Basic and in the form; both at once; Basic that is no base64, without a colon, not UTF-8, not ASCII;
    a wrong secret; the backend outside the vault; the public app; nobody."""
    vault, vault_secret = VAULT_CLIENT, CLIENT_SECRETS[VAULT_CLIENT]
    good = f"{vault}:{vault_secret}".encode()
    form = [("client_id", vault), ("client_secret", vault_secret)]
    return [
        (_basic(good), []),
        ([], form),
        (_basic(good), form),
        (_basic(good), [("client_secret", vault_secret)]),
        ([(b"authorization", b"Basic !!!not*base64")], []),
        (_basic(vault.encode()), []),
        (_basic(b"\xff\xfe" + good), []),
        ([(b"authorization", b"Basic \xe9\xff" + base64.b64encode(good))], []),
        ([(b"authorization", b"Basic")], []),
        (_basic(f"{vault}:wrong".encode()), []),
        (_basic(f"{OTHER_CLIENT}:{CLIENT_SECRETS[OTHER_CLIENT]}".encode()), []),
        ([], [("client_id", PUBLIC_CLIENT)]),
        ([], []),
    ]


def _strapi_jwts() -> list[str]:
    """Strapi jwts the bridge must refuse: `alg: none`, HS512, another secret, expired, an `id` that is
    no positive integer, and (signed right, without exp, as Strapi issues them with expiresIn off) an
    id no imported user holds."""
    key = OctKey.import_key(STRAPI_JWT_SECRET.encode())
    now = int(time.time())

    def signed(claims: dict[str, Any], alg: str = "HS256", signing_key: OctKey = key) -> str:
        return jwt.encode({"alg": alg, "typ": "JWT"}, claims, signing_key, algorithms=[alg])

    unsigned = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return [
        f"{unsigned}.{_b64(json.dumps({'id': 1, 'exp': now + 60}).encode())}.",
        signed({"id": 1, "exp": now + 60}, alg="HS512"),
        signed({"id": 1, "exp": now + 60}, signing_key=OctKey.import_key(secrets.token_bytes(32))),
        signed({"id": 1, "iat": now - 7200, "exp": now - 3600}),
        *(signed({"id": bad, "exp": now + 60}) for bad in ("1", 1.5, True, None, 0, -3, [1], {"id": 1})),
        signed({"exp": now + 60}),
        signed({"id": 10**12 + secrets.randbelow(10**6), "iat": now}),
    ]


def _pairs(
    subject: str, subject_type: str, requested: str | None, scope: str | None
) -> list[tuple[str, str]]:
    pairs = [("grant_type", TOKEN_EXCHANGE), ("subject_token", subject), ("subject_token_type", subject_type)]
    if requested is not None:
        pairs.append(("requested_token_type", requested))
    if scope is not None:
        pairs.append(("scope", scope))
    return pairs


SCOPES = st.sampled_from([None, "", "video.list", "user.info.basic video.list", "video.publish", 'a"b\\c'])
# Parameters the vault refuses, or a repeated one (RFC 6749 §3.2): each a refusal of its own; half the
# requests carry none, so the tokens themselves are judged.
EXTRA_PAIRS: st.SearchStrategy[list[tuple[str, str]]] = st.one_of(
    st.just([]),
    st.lists(
        min_size=1,
        max_size=2,
        elements=st.sampled_from(
            [
                ("subject_token", "again"),
                ("requested_token_type", TIKTOK_ACCESS_TOKEN_TYPE),
                ("grant_type", TOKEN_EXCHANGE),
                ("audience", "https://orders.example"),
                ("resource", "https://orders.example"),
                ("actor_token", "x"),
                ("code_verifier", "v" * 43),
                ("redirect_uri", "https://app.example/callback"),
            ]
        ),
    ),
)


@pytest.mark.parametrize("branch", ["vault", "strapi-jwt"])
def test_hostile_vault_and_strapi_jwt_requests_are_refused_as_documented(
    served: Served,
    spec: dict[str, Any],
    realm_tokens: RealmTokens,
    branch: str,
    pytestconfig: pytest.Config,
) -> None:
    """Vault requests with realm tokens forged, expired, of another realm or client, huge, and Strapi
    jwts forged or malformed, under every client authentication, good or malformed: each answered with
    a 4xx the OpenAPI document lists, its RFC 6749 error body and headers, never a token."""
    responses = spec["paths"]["/token"]["post"]["responses"]
    if branch == "vault":
        tokens = [*astuple(realm_tokens), *_forged(realm_tokens.presentable), "not-a-jwt"]
        subject_type, requested = st.just(ACCESS_TOKEN_TYPE), st.just(TIKTOK_ACCESS_TOKEN_TYPE)
        plain: tuple[str, str | None] = (ACCESS_TOKEN_TYPE, TIKTOK_ACCESS_TOKEN_TYPE)
    else:
        tokens = _strapi_jwts()
        subject_type, requested = st.just(STRAPI_JWT_TYPE), st.sampled_from([None, ACCESS_TOKEN_TYPE])
        plain = (STRAPI_JWT_TYPE, None)
    # Huge: past the token's length limit, past the body's.
    subjects = st.one_of(
        st.sampled_from(tokens),
        st.tuples(st.sampled_from(tokens), st.integers(1, 20_000)).map(lambda t: t[0] + "A" * t[1]),
    )
    clients = _client_authentications()
    vault_basic = clients[0]
    vault_before = vault_answers(served)

    @settings(
        max_examples=3000 if long_budget(pytestconfig) else 150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(
        subject=subjects,
        subject_type=subject_type,
        requested=requested,
        scope=SCOPES,
        # The vault's client, in Basic or the form, in at least half the requests.
        client=st.one_of(st.sampled_from(clients[:2]), st.sampled_from(clients)),
        extra=EXTRA_PAIRS,
    )
    def check(
        subject: str,
        subject_type: str,
        requested: str | None,
        scope: str | None,
        client: ClientAuthentication,
        extra: list[tuple[str, str]],
    ) -> None:
        headers, credentials = client
        body = urlencode(_pairs(subject, subject_type, requested, scope) + credentials + extra)
        response = http.post(
            "/token",
            content=body,
            headers=[(b"content-type", b"application/x-www-form-urlencoded"), *headers],
        )
        status = str(response.status_code)
        assert 400 <= response.status_code < 500, (status, response.text)
        assert status in responses, (status, response.text)
        answer = response.json()
        schema = responses[status]["content"]["application/json"]["schema"]
        Draft202012Validator({**schema, "components": spec["components"]}).validate(answer)
        assert "access_token" not in answer
        assert response.headers["cache-control"] == "no-store"
        for name, header in responses[status].get("headers", {}).items():
            assert name in response.headers or not header.get("required"), (status, name)
        if response.status_code == 401:
            assert response.headers["www-authenticate"].startswith("Basic ")

    for token in tokens:  # each token once as it is, from the vault's client, in a request otherwise right
        check = example(
            subject=token, subject_type=plain[0], requested=plain[1], scope=None, client=vault_basic, extra=[]
        )(check)
    with httpx2.Client(base_url=served.url, timeout=30) as http:
        check()
    if branch == "vault":
        # The realm tokens reached the vault's checks of the subject (not only the form's).
        assert (vault_answers(served) - vault_before)[VAULT_CLIENT, "invalid_request"] > 0


def test_the_fuzzed_bridge_logged_no_client_or_strapi_secret(served: Served) -> None:
    """After every request above, the bridge's log holds none of its clients' secrets nor Strapi's."""
    log = served.log.read_text(errors="replace")
    assert log_records(served), "the bridge logged nothing: the check would prove nothing"
    for secret in (*CLIENT_SECRETS.values(), STRAPI_JWT_SECRET):
        assert secret not in log
