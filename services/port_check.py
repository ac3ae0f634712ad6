"""Which local ports are free, and which process holds one that is not (Linux /proc; elsewhere only free or not).

`flashstream up` checks every port of the stack before it starts anything, and after a stage reports SERVING
it checks that the stage's own process holds its port: otherwise the answer came from another stack.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path

_TCP_LISTEN = "0A"  # socket state LISTEN in /proc/net/tcp


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
    holder = f" by {owner}" if owner is not None else ""
    return f"port {port} ({what}) on {host} is already in use{holder}"
