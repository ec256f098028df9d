"""Numeric Strapi ids for users the bridge made, against the real Keycloak and Redis: a JSON number, kept
across sign-ins and carried in the compat client's tokens, distinct under concurrency, never repeated
when Redis loses the counter, and above every id the Strapi import brought in."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis

from bridge.domain.strapi import ATTR_STRAPI_ID_HIGH_WATER, HIGH_WATER_USERNAME
from bridge.services.strapi_import import keycloak_username
from tests.conftest import served_bridge
from tests.integration.strapi.test_strapi_import import strapi_import
from tests.integration.test_exchange import linked_users, verified_claims

if TYPE_CHECKING:
    from pathlib import Path

    from bridge.settings import Settings
    from devstack.tiktok_emulator import TikTokEmulator
    from tests.conftest import BridgeClient, Stack

STRAPI = "/api/tiktok-auth-mobile/connect"


@pytest.fixture
def bridge_settings(stack: Stack) -> Settings:
    """The Strapi-compatible endpoint minting as its own client, whose tokens carry `strapi_id`."""
    return compat_settings(stack)


def compat_settings(stack: Stack, **overrides: Any) -> Settings:  # noqa: ANN401
    return stack.settings(
        strapi_keycloak_client_id="tiktok-bridge-strapi",
        strapi_keycloak_client_secret=stack.strapi_client_secret,
        **overrides,
    )


def high_water(stack: Stack) -> int:
    """The mark as Keycloak holds it on the marker account."""
    with stack.admin() as admin:
        (marker,) = admin.get(
            "/users",
            params={"username": HIGH_WATER_USERNAME, "exact": "true", "briefRepresentation": "false"},
        ).json()
    assert marker["enabled"] is False
    return int(marker["attributes"][ATTR_STRAPI_ID_HIGH_WATER][0])


def holders(stack: Stack, number: int) -> list[str]:
    """The Keycloak users whose strapi_id is `number`."""
    with stack.admin() as admin:
        found = admin.get("/users", params={"q": f"strapi_id:{number}", "exact": "true"}).json()
    return [user["id"] for user in found]


async def connect(bridge: BridgeClient, emulator: TikTokEmulator, open_id: str) -> dict[str, Any]:
    response = await bridge.http.post(STRAPI, json={"access_token": emulator.issue_access_token(open_id)})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def flush(stack: Stack) -> None:
    """Redis loses everything, the counter included."""
    client = aioredis.Redis.from_url(stack.redis.url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


def number_of(body: dict[str, Any]) -> int:
    number = body["user"]["id"]
    assert type(number) is int  # a JSON number, never a string (nor a bool)
    return number


async def test_a_new_user_gets_a_number_kept_across_sign_ins_and_carried_by_its_token(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """The first sign-in answers a JSON number above the high-water mark, stored on the user; its very
    first jwt carries it as `strapi_id`; the next sign-in answers the same number in body and token."""
    mark = high_water(stack)
    user = emulator.create_user()

    first = await connect(bridge, emulator, user.open_id)

    number = number_of(first)
    assert number > mark
    assert high_water(stack) >= number
    (linked,) = linked_users(stack, user.open_id)
    assert linked["attributes"]["strapi_id"] == [str(number)]
    assert first["user"]["documentId"] == linked["id"]
    claims = verified_claims(stack, first["jwt"])
    assert claims["strapi_id"] == number
    assert claims["azp"] == "tiktok-bridge-strapi"
    again = await connect(bridge, emulator, user.open_id)
    assert number_of(again) == number
    assert verified_claims(stack, again["jwt"])["strapi_id"] == number
    assert holders(stack, number) == [linked["id"]]


async def test_concurrent_first_sign_ins_on_several_replicas_get_distinct_numbers(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """Sixteen new users signing in at once, through two replicas sharing Redis and two counting in their
    own memory (no Redis), then one user signing in three times at once: every user ends with one number
    of its own, and the numbers answered are the numbers kept."""
    # Every request comes from one address: the per-address limit would refuse most of them.
    shared = compat_settings(stack, http_timeout=60.0, rate_limit_enabled=False)
    alone = compat_settings(
        stack, http_timeout=60.0, rate_limit_enabled=False, redis_url=None, sessions_enabled=False
    )
    users = [emulator.create_user() for _ in range(16)]
    twice = emulator.create_user()
    async with (
        served_bridge(shared, emulator) as a,
        served_bridge(shared, emulator) as b,
        served_bridge(alone, emulator) as c,
        served_bridge(alone, emulator) as d,
    ):
        replicas = (a, b, a, b, c, d)
        bodies = await asyncio.gather(
            *(connect(replicas[i % len(replicas)], emulator, u.open_id) for i, u in enumerate(users))
        )
        # Apart from the crowd: racing sign-ins of one user wait for its lock at most 15 s.
        same = await asyncio.gather(*(connect((a, b)[i % 2], emulator, twice.open_id) for i in range(3)))

    numbers = [number_of(body) for body in bodies]
    assert len(set(numbers)) == len(users)
    (number,) = {number_of(body) for body in same}
    assert number not in numbers
    for user, kept in zip([*users, twice], [*numbers, number], strict=True):
        (linked,) = linked_users(stack, user.open_id)
        assert linked["attributes"]["strapi_id"] == [str(kept)]
        assert holders(stack, kept) == [linked["id"]]


async def test_redis_emptied_between_allocations_never_repeats_a_number(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """FLUSHALL between first sign-ins: each new number lies above every earlier one, also after the
    user holding the highest number was deleted (its number is never handed out again)."""
    handed: list[int] = []
    for _ in range(3):
        user = emulator.create_user()
        number = number_of(await connect(bridge, emulator, user.open_id))
        assert number > max(handed, default=0)
        handed.append(number)
        (linked,) = linked_users(stack, user.open_id)
        with stack.admin() as admin:
            assert admin.delete(f"/users/{linked['id']}").status_code == 204
        await flush(stack)
    user = emulator.create_user()
    assert number_of(await connect(bridge, emulator, user.open_id)) > max(handed)


def strapi_rows(path: Path, rows: list[tuple[int, str, str]]) -> str:
    """A SQLite file with Strapi 5's up_users columns holding `rows` (id, provider, union_id)."""
    with closing(sqlite3.connect(path)) as db:
        db.execute(
            "CREATE TABLE up_users (id integer PRIMARY KEY, document_id varchar(255), username varchar(255), "
            "email varchar(255), provider varchar(255), password varchar(255), blocked boolean, "
            "created_at bigint)"
        )
        for strapi_id, provider, union_id in rows:
            db.execute(
                "INSERT INTO up_users (id, document_id, username, email, provider, blocked, created_at) "
                "VALUES (?, ?, ?, ?, ?, 0, 1767225600000)",
                (strapi_id, f"doc{strapi_id}", f"user {strapi_id}", f"{union_id}@tiktok.com", provider),
            )
        db.commit()
    return f"sqlite://{path}"


def delete_imported(stack: Stack, *strapi_ids: int) -> None:
    with stack.admin() as admin:
        for strapi_id in strapi_ids:
            for user in admin.get(
                "/users", params={"username": keycloak_username("tiktok_", strapi_id), "exact": "true"}
            ).json():
                admin.delete(f"/users/{user['id']}")


async def test_numbers_start_above_every_id_the_import_brought(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient, tmp_path: Path
) -> None:
    """An import of a Strapi database whose ids lie far above the mark (a local user's the highest)
    raises the mark to that id before creating anyone; the next new user's number lies above it."""
    top = high_water(stack) + 50_000
    url = strapi_rows(
        tmp_path / "strapi.db", [(top - 10_000, "tiktok", "numbersunion1"), (top, "local", "x")]
    )
    try:
        done = strapi_import(stack, url)
        assert done.returncode == 0, done.stderr
        assert high_water(stack) >= top
        number = number_of(await connect(bridge, emulator, emulator.create_user().open_id))
        assert number > top
    finally:
        delete_imported(stack, top - 10_000)


async def test_an_import_refuses_a_row_whose_id_the_bridge_handed_out(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient, tmp_path: Path
) -> None:
    """A Strapi row whose id the bridge already gave a new user (apps reached the bridge before the
    import) stops the import with one line naming the row; the numbered user keeps its number."""
    number = number_of(await connect(bridge, emulator, emulator.create_user().open_id))
    (holder,) = holders(stack, number)
    url = strapi_rows(tmp_path / "strapi.db", [(number, "tiktok", "numbersunion2")])
    try:
        done = strapi_import(stack, url)
        assert done.returncode == 1
        assert done.stderr.splitlines()[-1] == (
            f"strapi import: Strapi user {number}: its id is already held by Keycloak user {holder}, which "
            "this import did not create (a number handed out by the bridge before the import?)"
        )
        assert "Traceback" not in done.stderr
        assert holders(stack, number) == [holder]
    finally:
        delete_imported(stack, number)


async def test_a_user_deleted_since_its_last_sign_in_is_made_and_numbered_afresh(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """The cache still names the account an administrator deleted: the endpoint answers the new account
    the sign-in provisions, with a new number (the old one is not handed out again), never a 500."""
    user = emulator.create_user()
    first = number_of(await connect(bridge, emulator, user.open_id))
    (linked,) = linked_users(stack, user.open_id)
    with stack.admin() as admin:
        assert admin.delete(f"/users/{linked['id']}").status_code == 204

    again = await connect(bridge, emulator, user.open_id)

    (new,) = linked_users(stack, user.open_id)
    assert new["id"] != linked["id"]
    assert again["user"]["documentId"] == new["id"]
    assert number_of(again) > first
    assert new["attributes"]["strapi_id"] == [str(number_of(again))]
