"""Which local ports are free, and which process holds one that is not (Linux /proc; elsewhere only free or not).

`flashstream up` checks every port of the stack before it starts anything, and after a stage reports SERVING
it checks that the stage's own process holds its port: otherwise the answer came from another stack.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import Unavailable

_TCP_LISTEN = "0A"  # socket state LISTEN in /proc/net/tcp


class PortTaken(Unavailable):
    """A port is held by a process other than the one that means to serve on it."""


@dataclass(frozen=True)
class PortOwner:
    pid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid}: {self.command}" if self.command else f"pid {self.pid}"


def is_free(host: str, port: int) -> bool:
    """Whether a listening socket could bind host:port now (no SO_REUSEPORT, as the stages bind)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def port_owner(port: int) -> PortOwner | None:
    """The process listening on a TCP port, where /proc tells (None: nobody, or not visible to this user)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in targets:
                    raw = (proc / "cmdline").read_bytes()
                    return PortOwner(int(proc.name), raw.replace(b"\0", b" ").decode(errors="replace").strip())
            except OSError:
                continue
    return None


def describe_taken(host: str, port: int, what: str) -> str:
    """One line saying that `what` cannot have host:port, and who holds it where /proc tells."""
    owner = port_owner(port)
    ephemeral = _ephemeral_range()
    if owner is not None:
        holder = f" by {owner}"
    elif ephemeral is not None and ephemeral[0] <= port <= ephemeral[1]:
        low, high = ephemeral
        holder = (f" (no process listens on it: ports {low}-{high} are this system's range for outgoing "
                  "connections, and one of those may hold it for a while)")
    else:
        holder = ""
    return f"port {port} ({what}) on {host} is already in use{holder}"


def _ephemeral_range() -> tuple[int, int] | None:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return None
    return int(low), int(high)


def _bind_failed(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.EADDRINUSE, errno.EACCES)
    return isinstance(exc, RuntimeError) and "Failed to bind" in str(exc)  # grpcio's add_*_port


@contextmanager
def binding(host: str, port: int, what: str) -> Iterator[None]:
    """Turns a failed bind of host:port (asyncio's OSError, grpcio's RuntimeError) into PortTaken, one line
    naming the port and its holder, instead of a traceback from deep in the server library."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if port and _bind_failed(exc):
            raise PortTaken(describe_taken(host, port, what)) from exc
        raise
