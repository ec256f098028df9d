"""Start and stop a real redis-server (Debian's package) on a free loopback port, alone or as a small
Redis Cluster."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from devstack.keycloak import SetupError, free_port

if TYPE_CHECKING:
    from pathlib import Path


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
