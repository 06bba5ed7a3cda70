"""What start-up takes for itself before it touches any state: the state dir, locked (one daemon per
state dir), and the listening sockets (a port in use fails before the database is opened).

Each failure is a StartupError of one line. The lock is `flock(LOCK_EX | LOCK_NB)` on `<state_dir>/lock`,
which holds the pid of its owner; the kernel releases it when the process ends, however it ends (kill -9
too), so a stale lock file never keeps a daemon from starting.
"""

from __future__ import annotations

import fcntl
import os
import socket

from engine.reload import StartupError

LOCK_FILE = "lock"
BACKLOG = 128  # aiohttp's default


def lock_state_dir(state_dir: str) -> int:
    """Create `state_dir` (mode 0700) if need be and lock it; the lock file's descriptor, held until
    `unlock` or the end of the process. Raises StartupError when another process holds it."""
    path = os.path.join(state_dir, LOCK_FILE)
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StartupError([f"cannot lock state dir {state_dir}: {path}: {exc.strerror or exc}"]) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        who = f"pid {holder}" if holder.isdigit() else "another process"  # it may not have written it yet
        raise StartupError([f"state dir {state_dir} is in use by {who}"]) from None
    except OSError as exc:
        os.close(fd)
        raise StartupError([f"cannot lock state dir {state_dir}: {path}: {exc.strerror or exc}"]) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise StartupError([f"cannot write {path}: {exc.strerror or exc}"]) from None
    return fd


def unlock(fd: int) -> None:
    os.close(fd)  # closing the last descriptor of the open file releases the flock


def listen(host: str, port: int) -> list[socket.socket]:
    """A listening TCP socket for every address `host` resolves to, bound as aiohttp's TCPSite would bind
    them (SO_REUSEADDR; IPv6 sockets IPv6-only). Connections wait in the backlog until the API serves.
    Raises StartupError when any of them cannot be bound."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError([f"cannot listen on {where}: {exc.strerror or exc}"]) from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)  # now: SO_REUSEADDR lets two sockets bind one port while neither listens
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise StartupError([f"cannot listen on {where}: {exc.strerror or exc}"]) from None
    return sockets
