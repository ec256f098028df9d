# Shared by scripts/dev and scripts/test: make the Python environment from uv.lock.
# Everything is installed by these scripts, never by hand, so a fresh machine and CI behave alike.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Outside the checkout, so fresh clones (CI's included) reuse downloads; devstack/keycloak.py agrees.
CACHE="${BRIDGE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tiktok-keycloak-bridge}"
UV_VERSION="0.13.8"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

ensure_uv() {
    if [ -x "$CACHE/uv/bin/uv" ]; then UV="$CACHE/uv/bin/uv"; return; fi
    log "installing uv $UV_VERSION into $CACHE/uv"
    python3 -m venv "$CACHE/uv"
    "$CACHE/uv/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION"
    UV="$CACHE/uv/bin/uv"
}

ensure_python_env() {
    ensure_uv
    log "syncing .venv from uv.lock"
    (cd "$ROOT" && UV_PYTHON_DOWNLOADS=never "$UV" sync --frozen --extra dev --quiet)
    PY="$ROOT/.venv/bin/python"
}

ensure_redis_server() {
    if command -v redis-server >/dev/null 2>&1; then return; fi
    log "redis-server missing: installing Debian package redis-server"
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
    # The package starts a system-wide instance; the project starts its own on free ports.
    $sudo service redis-server stop >/dev/null 2>&1 || true
}

ensure_redis_sentinel() {
    # tests/integration/test_redis_sentinel.py runs three sentinels (redis-server --sentinel would do,
    # but Debian ships the mode as its own package, and a machine with only redis-server lacks it).
    if command -v redis-sentinel >/dev/null 2>&1; then return; fi
    log "redis-sentinel missing: installing Debian package redis-sentinel"
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-sentinel >/dev/null
    # Like redis-server's, the package starts a system-wide sentinel; the tests start their own.
    $sudo service redis-sentinel stop >/dev/null 2>&1 || true
}

ensure_java_and_maven() {
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    local missing=()
    command -v mvn >/dev/null 2>&1 || missing+=(maven)
    # Keycloak 26.7 runs on Java 17, 21 or 25; devstack/keycloak.py picks the best one present.
    if ! ls /usr/lib/jvm/*/bin/java >/dev/null 2>&1 && ! command -v java >/dev/null 2>&1 && [ -z "${BRIDGE_JAVA_HOME:-}" ]; then
        missing+=(openjdk-17-jre-headless)
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

ensure_postgres() {
    # Keycloak on PostgreSQL (scripts/test-keycloak-postgres, scripts/bench): devstack/postgres.py runs
    # the server binaries of Debian's package itself, on a free port with its own data folder.
    if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then return; fi
    log "PostgreSQL missing: installing Debian package postgresql"
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
    # The package starts a system-wide cluster on port 5432; the project starts its own servers.
    $sudo service postgresql stop >/dev/null 2>&1 || true
}

ensure_promtool() {
    # scripts/test checks deploy/prometheus/ with promtool. Debian's `prometheus` package would also
    # install and start a Prometheus server; only its promtool is needed, so the package is unpacked
    # into the cache instead of installed.
    PROMTOOL="$(command -v promtool || true)"
    if [ -z "$PROMTOOL" ]; then
        PROMTOOL="$CACHE/prometheus/usr/bin/promtool"
        if [ ! -x "$PROMTOOL" ]; then
            log "promtool missing: unpacking Debian package prometheus into $CACHE/prometheus"
            local download sudo=""; download="$(mktemp -d)"
            [ "$(id -u)" -ne 0 ] && sudo="sudo"
            (cd "$download" && apt-get download prometheus >/dev/null 2>&1) \
                || { $sudo apt-get update -qq && (cd "$download" && apt-get download prometheus >/dev/null); }
            dpkg-deb -x "$download"/prometheus_*.deb "$CACHE/prometheus"
            rm -rf "$download"
        fi
    fi
    # Not BRIDGE_-prefixed: the bridge refuses BRIDGE_* variables it does not know.
    export PROMTOOL
}
