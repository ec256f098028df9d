"""Fetch, start and stop a real Keycloak server for tests and the local stack.

The server is the official distribution, `org.keycloak:keycloak-quarkus-dist`, fetched with Maven into a
cache folder and run on a JDK found on the machine. Each `KeycloakServer` runs from its own copy of the
distribution (Keycloak writes its build and data under its home folder), imports every realm file of
`keycloak-config/` with the environment given, and is ready when its management port says so. By default
it keeps its data in memory (H2, gone at stop); given a `KeycloakDatabase`, in PostgreSQL, as production
does (`devstack.postgres` starts one).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

# Pinned: the JWT Authorization Grant became a supported feature in 26.6 (CVE fixes for it in 26.5.3).
KEYCLOAK_VERSION = "26.7.4"
# Features the realm needs, passed explicitly (harmless if already on by default).
KEYCLOAK_FEATURES = ("jwt-authorization-grant",)
# JDKs Keycloak 26.6+ supports, best first (17 is deprecated upstream but still runs).
SUPPORTED_JAVA_MAJORS = (25, 21, 17)

ROOT = Path(__file__).resolve().parent.parent
REALM_CONFIG_DIR = ROOT / "keycloak-config"


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# Where progress goes: stderr by default; the test harness points it at pytest's terminal, which
# otherwise captures stderr during fixture set-up and would hide it until a failure.
progress_writer: Callable[[str], None] = _to_stderr


def progress(message: str) -> None:
    """Tell the person waiting what a long set-up step is doing."""
    progress_writer(f"[{time.strftime('%H:%M:%S')}] {message}")


def default_cache_dir() -> Path:
    """Outside the checkout, so fresh clones (CI's included) reuse one download."""
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("BRIDGE_CACHE_DIR") or xdg / "tiktok-keycloak-bridge")


class SetupError(RuntimeError):
    """A development dependency could not be fetched or started; the message says what to do."""


class DistributionNotServed(SetupError):
    """The Maven repository this machine uses has no such Keycloak release (yet): nothing to retry."""


# How Maven says an artifact is missing, as opposed to a network or set-up failure ("Could not find
# artifact", and "Unable to find artifact ... was not found in" from the dependency plugin, seen here
# for keycloak-quarkus-dist 26.8.2).
_NOT_SERVED = re.compile(r"Could not find artifact|Unable to find artifact|was not found in")
# `python -m devstack.keycloak VERSION`'s exit status when the release is not served.
EXIT_NOT_SERVED = 3


# --------------------------------------------------------------------------------------------- JDK


def java_major_version(java: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=30, check=False
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if match is None:
        return None
    major = int(match.group(1))
    # Java 8 and older call themselves "1.x".
    return int(match.group(2) or 0) if major == 1 else major


def find_java_home() -> Path:
    """Return a JAVA_HOME whose version Keycloak supports, preferring the newest."""
    candidates: list[Path] = []
    candidates.extend(Path(v) for var in ("BRIDGE_JAVA_HOME", "JAVA_HOME") if (v := os.environ.get(var)))
    jvm_dir = Path("/usr/lib/jvm")
    if jvm_dir.is_dir():
        candidates.extend(sorted(p for p in jvm_dir.iterdir() if p.is_dir() and not p.is_symlink()))
    if on_path := shutil.which("java"):
        candidates.append(Path(on_path).resolve().parent.parent)

    found: dict[int, Path] = {}
    for home in candidates:
        java = home / "bin" / "java"
        if not java.exists():
            continue
        major = java_major_version(java)
        if major in SUPPORTED_JAVA_MAJORS and major not in found:
            found[major] = home
    for major in SUPPORTED_JAVA_MAJORS:
        if major in found:
            return found[major]
    raise SetupError(
        "no JDK that Keycloak supports (17, 21 or 25) was found; install one "
        "(Debian: apt-get install openjdk-17-jre-headless) or set BRIDGE_JAVA_HOME"
    )


# ------------------------------------------------------------------------------------ distribution


def fetch_distribution(cache_dir: Path | None = None, version: str = KEYCLOAK_VERSION) -> Path:
    """Return the unpacked distribution, downloading it with Maven the first time."""
    cache_dir = cache_dir or default_cache_dir()
    home = cache_dir / "keycloak" / f"keycloak-{version}"
    if (home / "bin" / "kc.sh").exists():
        return home
    mvn = shutil.which("mvn")
    if mvn is None:
        raise SetupError("Maven (mvn) is needed to fetch Keycloak; Debian: apt-get install maven")
    download_dir = cache_dir / "keycloak" / "download"
    archive = download_dir / f"keycloak-quarkus-dist-{version}.tar.gz"
    if not archive.exists():
        progress(f"downloading Keycloak {version} (org.keycloak:keycloak-quarkus-dist, ~180 MB) with Maven")
        started = time.monotonic()
        result = subprocess.run(
            [
                mvn,
                "--batch-mode",
                "--no-transfer-progress",
                # Maven remembers a missing artifact for a day: without this, a release tried before
                # the repository served it would still be refused after it does.
                "--update-snapshots",
                "dependency:copy",
                f"-Dartifact=org.keycloak:keycloak-quarkus-dist:{version}:tar.gz",
                f"-DoutputDirectory={download_dir}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0 or not archive.exists():
            if _NOT_SERVED.search(result.stdout + result.stderr):
                raise DistributionNotServed(
                    f"Keycloak {version} (org.keycloak:keycloak-quarkus-dist) is not served by the Maven "
                    "repository this machine uses"
                )
            tail = "\n".join(result.stdout.splitlines()[-15:])
            raise SetupError(f"Maven could not fetch Keycloak {version}:\n{tail}")
        progress(f"downloaded in {time.monotonic() - started:.0f} s")
    progress(f"unpacking {archive.name}")
    staging = cache_dir / "keycloak" / f".unpack-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(staging, filter="data")
    # Rename into place last, so an interrupted unpack is never mistaken for a good one.
    unpacked = staging / f"keycloak-{version}"
    try:
        unpacked.rename(home)
    except OSError:
        if not (home / "bin" / "kc.sh").exists():
            raise
    shutil.rmtree(staging, ignore_errors=True)
    # Data files lose their mode bits through the "data" filter; the launchers must stay executable.
    for script in (home / "bin").glob("*.sh"):
        script.chmod(0o755)
    return home


# ---------------------------------------------------------------------------------------- server


def free_port() -> int:
    import socket  # noqa: PLC0415 - only the launchers need it

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class KeycloakDatabase:
    """A PostgreSQL database for Keycloak: its JDBC URL and the account Keycloak logs in with."""

    url: str
    username: str
    password: str = field(repr=False)


@dataclass
class KeycloakServer:
    """One Keycloak process on loopback, started from a private copy of the distribution.

    The database vendor is a build-time option: Keycloak re-augments its build when it changes, which
    takes minutes here. An instance folder is therefore kept for one vendor (name PostgreSQL ones apart,
    e.g. `tests-postgres`), or every start would rebuild."""

    instance_dir: Path
    realm_env: Mapping[str, str]
    http_port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    admin_username: str = "admin"
    admin_password: str = "admin"  # noqa: S105 - a throwaway local server's bootstrap admin
    realm_config_dir: Path = REALM_CONFIG_DIR
    process: subprocess.Popen[bytes] | None = None
    # Which release runs (its distribution must be the one given to `prepare`), whether the project's
    # realm is imported at start (off: a bare Keycloak, as an organisation's existing one would be),
    # and which features are switched on (empty: a Keycloak without the JWT Authorization Grant).
    version: str = KEYCLOAK_VERSION
    import_realm: bool = True
    features: tuple[str, ...] = KEYCLOAK_FEATURES
    # Features switched off; the grant is on by default in 26.7, so this is how to start one without it.
    features_disabled: tuple[str, ...] = ()
    # None: the in-memory H2 database (`--db=dev-mem`), empty at every start.
    database: KeycloakDatabase | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_file(self) -> Path:
        return self.instance_dir / "keycloak.log"

    def prepare(self, distribution: Path) -> None:
        # A reused instance folder holding another release (its version.txt differs) is copied anew.
        marker = "version.txt"
        same_release = (self.instance_dir / marker).exists() and (
            self.instance_dir / marker
        ).read_bytes() == (distribution / marker).read_bytes()
        if not (self.instance_dir / "bin" / "kc.sh").exists() or not same_release:
            progress(f"copying Keycloak into {self.instance_dir}")
            shutil.rmtree(self.instance_dir, ignore_errors=True)
            shutil.copytree(distribution, self.instance_dir, symlinks=True)
        import_dir = self.instance_dir / "data" / "import"
        shutil.rmtree(import_dir, ignore_errors=True)
        import_dir.mkdir(parents=True)
        if not self.import_realm:
            return
        for realm_file in sorted(self.realm_config_dir.glob("*-realm.json")):
            shutil.copy(realm_file, import_dir / realm_file.name)

    def start(self, java_home: Path) -> None:
        env = {
            **os.environ,
            **self.realm_env,
            "JAVA_HOME": str(java_home),
            "KC_BOOTSTRAP_ADMIN_USERNAME": self.admin_username,
            "KC_BOOTSTRAP_ADMIN_PASSWORD": self.admin_password,
        }
        if self.database is not None:
            # As a variable, not `--db-password`: a command line is visible to every user in `ps`.
            env["KC_DB_PASSWORD"] = self.database.password
        args = [
            str(self.instance_dir / "bin" / "kc.sh"),
            "start-dev",
            f"--http-port={self.http_port}",
            "--http-host=127.0.0.1",
            f"--http-management-port={self.management_port}",
            f"--hostname={self.url}",
            *self.database_args(),
            "--cache=local",
            "--health-enabled=true",
            "--metrics-enabled=true",
        ]
        if self.features:
            args.append(f"--features={','.join(self.features)}")
        if self.features_disabled:
            args.append(f"--features-disabled={','.join(self.features_disabled)}")
        if self.import_realm:
            args.append("--import-realm")
        progress(
            f"starting Keycloak {self.version} on {self.url} "
            f"(database: {'postgres' if self.database else 'dev-mem'}; java: {java_home})"
        )
        with self.log_file.open("wb") as log:
            # A new session, so that stop() can end kc.sh and the JVM it starts together.
            self.process = subprocess.Popen(
                args,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - only a prctl call, before exec
            )

    def database_args(self) -> list[str]:
        if self.database is None:
            return ["--db=dev-mem"]
        return ["--db=postgres", f"--db-url={self.database.url}", f"--db-username={self.database.username}"]

    def start_and_wait(self, java_home: Path, attempts: int = 3) -> None:
        """`start` and `wait_ready`, on other ports again if one was taken between `free_port` choosing
        it and Keycloak binding it (another process on a busy machine took it: seen once)."""
        for attempt in range(1, attempts + 1):
            self.start(java_home)
            try:
                self.wait_ready()
            except SetupError as exc:
                if "Address already in use" not in str(exc) or attempt == attempts:
                    raise
                progress("a port chosen for Keycloak was taken meanwhile: starting again on others")
                self.http_port, self.management_port = free_port(), free_port()
            else:
                return

    # Generous: a first start builds Keycloak (2-4 minutes on two busy cores, seen here); a quiet
    # machine reusing a build is ready in about 15 s, and waiting longer costs nothing then.
    def wait_ready(self, timeout: float = 600.0) -> None:
        started = time.monotonic()
        next_note = started + 10
        ready_url = f"http://127.0.0.1:{self.management_port}/health/ready"
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise SetupError(f"Keycloak exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as response:
                    if response.status == 200:  # noqa: PLR2004
                        progress(f"Keycloak ready after {time.monotonic() - started:.0f} s")
                        return
            except (urllib.error.URLError, OSError):
                pass
            now = time.monotonic()
            if now - started > timeout:
                raise SetupError(f"Keycloak not ready after {timeout:.0f} s:\n{self.log_tail()}")
            if now >= next_note:
                progress(f"waiting for Keycloak ({now - started:.0f} s): {self.last_log_line()}")
                next_note = now + 10
            time.sleep(0.5)

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def last_log_line(self) -> str:
        tail = self.log_tail(1)
        return tail[:160]

    def pause(self) -> None:
        """Freeze the JVM (SIGSTOP): connections are accepted by the kernel but never answered."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.resume()
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn`: in the child, before exec, ask for `sig` when the process that started it dies,
    however it dies (a test run killed by a timeout left JVMs running for good, each holding a core's
    worth of work). Changing the account clears the request; Python runs this after `Popen(user=...)` has
    changed it, so the request holds for a server run as another account too."""
    if sys.platform != "linux":
        return lambda: None
    import ctypes  # noqa: PLC0415 - Linux only

    # Loaded here, in the parent: a child switched to another account may not read Python's files.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def arm() -> None:
        prctl(pr_set_pdeathsig, sig)

    return arm


@contextmanager
def reusable_dir(parent: Path, name: str) -> Iterator[Path]:
    """`parent / name`, kept between runs and held with a lock; if another run holds it, a private
    folder beside it that is removed afterwards."""
    parent.mkdir(parents=True, exist_ok=True)
    with (parent / f"{name}.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            private = parent / f"{name}-{os.getpid()}"
            try:
                yield private
            finally:
                shutil.rmtree(private, ignore_errors=True)
            return
        yield parent / name


@contextmanager
def reusable_instance_dir(name: str) -> Iterator[Path]:
    """A Keycloak home kept between runs (its build is reused: about 20 s saved per start)."""
    with reusable_dir(default_cache_dir() / "keycloak" / "instances", name) as instance_dir:
        yield instance_dir


def start_keycloak(instance_dir: Path, realm_env: Mapping[str, str], **kwargs: object) -> KeycloakServer:
    """Fetch (once), copy, start and wait: the whole set-up in one call, with progress shown."""
    server = KeycloakServer(instance_dir=instance_dir, realm_env=realm_env, **kwargs)  # type: ignore[arg-type]
    distribution = fetch_distribution(version=server.version)
    java_home = find_java_home()
    server.prepare(distribution)
    try:
        server.start_and_wait(java_home)
    except BaseException:
        server.stop()
        raise
    return server


if __name__ == "__main__":
    # `python -m devstack.keycloak`: fetch the distribution and pick a JDK ahead of a test run.
    # An optional argument names another release, e.g. the oldest supported one for
    # scripts/test-keycloak-versions.
    wanted = sys.argv[1] if len(sys.argv) > 1 else KEYCLOAK_VERSION
    try:
        progress(f"Keycloak {wanted} at {fetch_distribution(version=wanted)}")
    except DistributionNotServed as exc:
        progress(str(exc))
        sys.exit(EXIT_NOT_SERVED)
    progress(f"JDK: {find_java_home()}")
