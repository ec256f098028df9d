"""`python -m devstack`: the whole local stack, for trying the bridge with curl.

Starts the TikTok emulator (with a demo user and token), the bridge (`python -m bridge serve`, in-memory
cache unless BRIDGE_REDIS_URL is set) and a real Keycloak with `keycloak-config/` imported. Ctrl-C stops all.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from devstack.bridge_env import ADMIN_CLIENT_ID, realm_variables
from devstack.keycloak import ROOT, SetupError, progress, start_keycloak

DEV_CLIENT_SECRET = "dev-only-keycloak-client-secret"  # noqa: S105 - local development realm only
DEV_STRAPI_CLIENT_SECRET = "dev-only-strapi-client-secret"  # noqa: S105 - local development realm only
DEV_ADMIN_CLIENT_SECRET = "dev-only-admin-client-secret"  # noqa: S105 - local development realm only


def wait_http(url: str, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - our own loopback URL
                return
        except OSError:
            time.sleep(0.2)
    raise SetupError(f"{what} did not answer at {url} within {timeout:.0f} s")


def bridge_banner(bridge_url: str, admin_port: int, *, redis: bool) -> str:
    """The line announcing the bridge: where it listens, its cache, and its admin listener if any."""
    cache = "Redis" if redis else "memory"
    if not admin_port:
        return f"starting the bridge on {bridge_url} (cache: {cache}; no admin listener)"
    return (
        f"starting the bridge on {bridge_url} (cache: {cache}; /metrics and the detailed /readyz on "
        f"its admin listener, http://127.0.0.1:{admin_port})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("--bridge-port", type=int, default=int(os.environ.get("BRIDGE_PORT", "8000")))
    parser.add_argument("--keycloak-port", type=int, default=int(os.environ.get("KEYCLOAK_PORT", "8080")))
    parser.add_argument(
        "--tiktok-port", type=int, default=int(os.environ.get("TIKTOK_EMULATOR_PORT", "8081"))
    )
    parser.add_argument(
        "--admin-port",
        type=int,
        default=int(os.environ.get("BRIDGE_ADMIN_PORT", "9000")),
        help="the bridge's admin listener (default: BRIDGE_ADMIN_PORT, else 9000); 0: none",
    )
    args = parser.parse_args()

    bridge_url = f"http://127.0.0.1:{args.bridge_port}"
    keycloak_url = f"http://127.0.0.1:{args.keycloak_port}"
    tiktok_url = f"http://127.0.0.1:{args.tiktok_port}"
    env = {
        **os.environ,
        "BRIDGE_TIKTOK_CLIENT_KEY": os.environ.get("BRIDGE_TIKTOK_CLIENT_KEY", "emulated-client-key"),
        "BRIDGE_TIKTOK_CLIENT_SECRET": os.environ.get(
            "BRIDGE_TIKTOK_CLIENT_SECRET", "emulated-client-secret"
        ),
        "BRIDGE_TIKTOK_API_URL": tiktok_url,
        "BRIDGE_KEYCLOAK_URL": keycloak_url,
        "BRIDGE_KEYCLOAK_REALM": "app",
        "BRIDGE_KEYCLOAK_CLIENT_ID": "tiktok-bridge",
        "BRIDGE_KEYCLOAK_CLIENT_SECRET": DEV_CLIENT_SECRET,
        "BRIDGE_KEYCLOAK_ADMIN_CLIENT_ID": ADMIN_CLIENT_ID,
        "BRIDGE_KEYCLOAK_ADMIN_CLIENT_SECRET": DEV_ADMIN_CLIENT_SECRET,
        "BRIDGE_STRAPI_KEYCLOAK_CLIENT_ID": "tiktok-bridge-strapi",
        "BRIDGE_STRAPI_KEYCLOAK_CLIENT_SECRET": DEV_STRAPI_CLIENT_SECRET,
        "BRIDGE_ISSUER": bridge_url,
        "BRIDGE_DATA_DIR": str(ROOT / "var"),
    }
    children: list[subprocess.Popen[bytes]] = []
    keycloak = None
    try:
        progress(f"starting the TikTok emulator on {tiktok_url}")
        children.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "devstack.tiktok_emulator",
                    "--port",
                    str(args.tiktok_port),
                    "--seed-demo",
                ],
                env=env,
            )
        )
        progress(bridge_banner(bridge_url, args.admin_port, redis="BRIDGE_REDIS_URL" in env))
        # The port is passed on, so the banner names the listener the bridge opens, whatever the
        # environment said.
        serve = ["serve", "--port", str(args.bridge_port), "--admin-port", str(args.admin_port)]
        children.append(subprocess.Popen([sys.executable, "-m", "bridge", *serve], env=env))
        wait_http(f"{bridge_url}/healthz", "the bridge")
        keycloak = start_keycloak(
            Path(env["BRIDGE_DATA_DIR"]) / "keycloak",
            realm_variables(
                realm="app",
                client_id="tiktok-bridge",
                client_secret=DEV_CLIENT_SECRET,
                issuer=bridge_url,
                admin_client_secret=DEV_ADMIN_CLIENT_SECRET,
                BRIDGE_STRAPI_KEYCLOAK_CLIENT_SECRET=DEV_STRAPI_CLIENT_SECRET,
            ),
            http_port=args.keycloak_port,
        )
        progress(
            "ready. Exchange the demo TikTok token printed above:\n"
            f"  curl -s {bridge_url}/token -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \\\n"
            "    -d subject_token_type=urn:ietf:params:oauth:token-type:access_token \\\n"
            "    -d subject_token=<demo token>\n"
            f"Keycloak admin console: {keycloak_url}/admin (admin / admin). Ctrl-C stops everything."
        )
        signal.pause()  # until Ctrl-C or SIGTERM (which _stop turns into KeyboardInterrupt)
    except KeyboardInterrupt:
        pass
    except SetupError as exc:
        progress(f"set-up failed: {exc}")
        sys.exit(1)
    finally:
        progress("stopping")
        if keycloak is not None:
            keycloak.stop()
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=30)


def _stop(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    # A handler, not a blocked signal mask: children inherit a mask, and then could never be stopped.
    signal.signal(signal.SIGTERM, _stop)
    main()
