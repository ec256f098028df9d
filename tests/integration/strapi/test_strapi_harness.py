"""The harness' Strapi holds users as the TikTok plugin makes them, and jwts Strapi itself signed."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from typing import TYPE_CHECKING
from urllib.parse import unquote

import httpx2
from joserfc import jwt
from joserfc.jwk import OctKey

from devstack.strapi import JWT_LIFETIME

if TYPE_CHECKING:
    from devstack.strapi import StrapiServer
    from tests.integration.strapi.conftest import StrapiUsers


def _rows(strapi: StrapiServer, sql: str, *params: object) -> list[sqlite3.Row]:
    with closing(sqlite3.connect(f"file:{strapi.database_file}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        return db.execute(sql, params).fetchall()


def test_tiktok_users_are_stored_as_the_plugin_stores_them(
    strapi: StrapiServer, strapi_users: StrapiUsers
) -> None:
    """Each TikTok sign-in is an up_users row: provider tiktok, lowercased pseudo-email, display name,
    confirmed, a document id, the default role; the blocked ones blocked."""
    for seeded, blocked in [(u, False) for u in strapi_users.tiktok] + [
        (u, True) for u in strapi_users.blocked
    ]:
        assert seeded.union_id is not None
        [row] = _rows(
            strapi,
            "SELECT u.*, r.type AS role_type FROM up_users u "
            "JOIN up_users_role_lnk l ON l.user_id = u.id JOIN up_roles r ON r.id = l.role_id WHERE u.id = ?",
            seeded.id,
        )
        assert row["provider"] == "tiktok"
        assert row["email"] == f"{seeded.union_id.lower()}@tiktok.com"
        assert row["username"] == unquote(seeded.user["username"]) == seeded.user["username"]
        assert row["confirmed"] == 1
        assert row["blocked"] == int(blocked)
        assert row["document_id"] == seeded.user["documentId"]
        assert len(row["document_id"]) == 24
        assert row["password"] is None
        assert row["role_type"] == "authenticated"
    assert strapi_users.tiktok[2].user["username"] == "Carol \N{MUSICAL NOTE}"


def test_jwts_are_signed_by_strapi_with_its_secret(strapi: StrapiServer, strapi_users: StrapiUsers) -> None:
    """A TikTok user's jwt is HS256 over {id, iat, exp} with Strapi's secret, exp 30 days on, and Strapi
    accepts it for /api/users/me."""
    seeded = strapi_users.tiktok[0]
    token = jwt.decode(seeded.jwt, OctKey.import_key(strapi.jwt_secret), algorithms=["HS256"])
    assert token.header == {"alg": "HS256", "typ": "JWT"}
    assert set(token.claims) == {"id", "iat", "exp"}
    assert token.claims["id"] == seeded.id
    assert token.claims["exp"] - token.claims["iat"] == JWT_LIFETIME
    assert abs(token.claims["iat"] - time.time()) < 600
    me = httpx2.get(f"{strapi.url}/api/users/me", headers={"Authorization": f"Bearer {seeded.jwt}"})
    assert me.status_code == 200, me.text
    assert me.json()["id"] == seeded.id
    assert me.json()["provider"] == "tiktok"


def test_a_jwt_under_another_secret_is_refused_by_strapi(
    strapi: StrapiServer, strapi_users: StrapiUsers
) -> None:
    """Strapi refuses a jwt for the same id signed with another secret: the harness' secret is Strapi's."""
    forged = jwt.encode(
        {"alg": "HS256"},
        {"id": strapi_users.tiktok[0].id, "iat": int(time.time())},
        OctKey.import_key("another-secret-of-at-least-32-bytes!"),
    )
    me = httpx2.get(f"{strapi.url}/api/users/me", headers={"Authorization": f"Bearer {forged}"})
    assert me.status_code == 401


def test_blocked_users_are_refused_by_strapi(strapi: StrapiServer, strapi_users: StrapiUsers) -> None:
    """A blocked user's jwt, valid as it is, no longer opens Strapi."""
    [blocked] = strapi_users.blocked
    me = httpx2.get(f"{strapi.url}/api/users/me", headers={"Authorization": f"Bearer {blocked.jwt}"})
    assert me.status_code == 401


def test_local_users_sign_in_with_their_password(strapi: StrapiServer, strapi_users: StrapiUsers) -> None:
    """Local users have a password hash in Strapi and sign in through /api/auth/local."""
    for seeded in strapi_users.local:
        assert seeded.password is not None
        [row] = _rows(strapi, "SELECT provider, password FROM up_users WHERE id = ?", seeded.id)
        assert row["provider"] == "local"
        assert row["password"].startswith("$2")
        signed_in = strapi.sign_in_local(seeded.user["email"], seeded.password)
        assert signed_in["user"]["id"] == seeded.id
        claims = jwt.decode(
            signed_in["jwt"], OctKey.import_key(strapi.jwt_secret), algorithms=["HS256"]
        ).claims
        assert claims["id"] == seeded.id
