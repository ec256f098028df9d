"""Start and stop a real redis-server (Debian's package) on a free loopback port, alone, as a small
Redis Cluster, or as a Sentinel-monitored master with a replica (Debian's redis-sentinel)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from devstack.keycloak import SetupError, free_port

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import BinaryIO


@dataclass
class RedisServer:
    """A throwaway redis-server: no persistence, loopback only."""

    work_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SetupError("redis-server not found; Debian: apt-get install redis-server")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.work_dir),
            "--logfile", str(self.work_dir / f"redis-{self.port}.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready()

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise SetupError(f"redis-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise SetupError(f"redis-server on port {self.port} not ready after {timeout} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@dataclass
class RedisClusterNodes:
    """A throwaway Redis Cluster of `size` masters on loopback, every slot assigned, no replicas."""

    work_dir: Path
    size: int = 3
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout: float = 30.0) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise SetupError("redis-cli not found; Debian: apt-get install redis-tools")
        for _ in range(self.size):
            port = free_port()
            node = RedisServer(
                work_dir=self.work_dir,
                port=port,
                # The bus port is by default port + 10000, which may be taken or past 65535.
                extra_args=(
                    "--cluster-enabled", "yes",
                    "--cluster-port", str(free_port()),
                    "--cluster-config-file", f"nodes-{port}.conf",
                ),
            )  # fmt: skip
            self.nodes.append(node)
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        created = subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if created.returncode != 0:
            raise SetupError(
                f"redis-cli --cluster create failed: {created.stdout[-500:]}{created.stderr[-500:]}"
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [
                subprocess.run(
                    [cli, "-p", str(node.port), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout
                for node in self.nodes
            ]
            if all("cluster_state:ok" in state for state in states):
                return
            time.sleep(0.1)
        raise SetupError(f"Redis Cluster on {addresses} not ready after {timeout} s")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


QUORUM = 2  # of the three sentinels


@dataclass
class RedisSentinelSet:
    """A throwaway Sentinel deployment on loopback: one master, one replica and three sentinels that
    monitor it as `service` (quorum 2), with short timers so a failover takes seconds, not a minute.

    `url` is the bridge's `redis+sentinel://` form of it. `kill_master` is a crash (SIGKILL): nothing is
    flushed, connections are reset. `wait_for_failover` returns once a majority of sentinels name the
    replica as master."""

    work_dir: Path
    service: str = "bridge"
    # Sentinel's defaults are 30 s and 3 min; a test wants the failover within a few seconds.
    down_after_ms: int = 1000
    failover_timeout_ms: int = 5000
    master: RedisServer | None = None
    replica: RedisServer | None = None
    sentinel_ports: list[int] = field(default_factory=list)
    sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def start(self, timeout: float = 20.0) -> None:
        binary = shutil.which("redis-sentinel")
        if binary is None:
            raise SetupError("redis-sentinel not found; Debian: apt-get install redis-sentinel")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.master = RedisServer(work_dir=self.work_dir / "master")
        self.master.start()
        self.replica = RedisServer(
            work_dir=self.work_dir / "replica", extra_args=("--replicaof", "127.0.0.1", str(self.master.port))
        )
        self.replica.start()
        deadline = time.monotonic() + timeout
        self._wait(deadline, "replica linked", lambda: "master_link_status:up" in self.info(self.replica))
        for index in range(3):
            port = free_port()
            # Sentinel rewrites its configuration file as it learns the set-up: one writable file each.
            config = self.work_dir / f"sentinel-{index}.conf"
            config.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.work_dir}\n"
                f"logfile {self.work_dir / f'sentinel-{port}.log'}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} {QUORUM}\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
            self.sentinel_ports.append(port)
            self.sentinels.append(
                subprocess.Popen([binary, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        # Sentinels find the replica through the master and each other through hello messages (every
        # 2 s): a failover before that would not reach its quorum.
        self._wait(deadline, "sentinels agreed", self._sentinels_agree)

    def _sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            try:
                fields = self.command(port, "SENTINEL", "MASTER", self.service)
            except OSError:
                return False
            state = dict(zip(fields[::2], fields[1::2], strict=True))
            if state.get("num-slaves") != "1" or state.get("num-other-sentinels") != "2":
                return False
        return True

    def master_port(self) -> int | None:
        """The master's port as most sentinels name it (None without a majority)."""
        named: list[str] = []
        for port in self.sentinel_ports:
            try:
                named.append(self.command(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)[1])
            except (OSError, IndexError):
                continue
        for candidate in set(named):
            if named.count(candidate) >= QUORUM:
                return int(candidate)
        return None

    def kill_master(self) -> None:
        if self.master is not None and self.master.process is not None:
            self.master.process.kill()
            self.master.process.wait(timeout=5)

    def rejoin(self, timeout: float = 20.0) -> None:
        """After `kill_master` and the failover: start the killed master again as the promoted one's
        replica (the role the sentinels give a returning master) and wait until its link is up, so the
        set has a replica to confirm writes and to fail over to again. `master` and `replica` swap."""
        old, promoted = self.master, self.replica
        assert old is not None  # noqa: S101 - started
        assert promoted is not None  # noqa: S101 - started
        again = RedisServer(
            work_dir=old.work_dir, port=old.port, extra_args=("--replicaof", "127.0.0.1", str(promoted.port))
        )
        again.start()
        self.master, self.replica = promoted, again
        deadline = time.monotonic() + timeout
        self._wait(deadline, "rejoined", lambda: "master_link_status:up" in self.info(again))

    def wait_for_failover(self, timeout: float = 20.0) -> float:
        """Seconds until a majority of sentinels name the replica as master."""
        assert self.replica is not None  # noqa: S101 - started
        started = time.monotonic()
        self._wait(started + timeout, "failover", lambda: self.master_port() == self.replica.port)  # type: ignore[union-attr]
        return time.monotonic() - started

    @staticmethod
    def info(server: RedisServer | None) -> str:
        assert server is not None  # noqa: S101 - started
        return "\n".join(RedisSentinelSet.command(server.port, "INFO", "replication"))

    @staticmethod
    def command(port: int, *args: str) -> list[str]:
        """One command in RESP over a fresh loopback connection; the reply flattened to strings."""
        request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(request.encode())
            reader = sock.makefile("rb")
            return _read_reply(reader)

    @staticmethod
    def _wait(deadline: float, what: str, done: Callable[[], bool]) -> None:
        while time.monotonic() < deadline:
            if done():
                return
            time.sleep(0.05)
        raise SetupError(f"Redis Sentinel set-up: {what} not reached in time")

    def stop(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.terminate()
        for process in self.sentinels:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        for server in (self.master, self.replica):
            if server is not None:
                server.stop()


def _read_reply(reader: BinaryIO) -> list[str]:
    """A RESP2 reply as a flat list of strings (enough for INFO and the SENTINEL commands used here)."""
    line = reader.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:].decode()
    if kind == b"-":
        raise OSError(f"Redis error: {rest}")
    if kind in {b"+", b":"}:
        return [rest]
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return []
        data = reader.read(size + 2)[:size].decode()
        return data.splitlines() if "\n" in data else [data]
    if kind == b"*":
        items: list[str] = []
        for _ in range(max(0, int(rest))):
            items.extend(_read_reply(reader))
        return items
    raise OSError(f"unexpected Redis reply: {line[:40]!r}")
