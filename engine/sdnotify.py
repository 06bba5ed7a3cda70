"""The sd_notify protocol without libsystemd: tell systemd we are ready, reloading, stopping, alive.

Each message is one datagram of `KEY=value` lines sent to `$NOTIFY_SOCKET`. Outside systemd (no
`$NOTIFY_SOCKET`) every method does nothing. Sending never raises: the daemon must outlive a vanished
socket, so a failure is logged once, at warning, and later ones are dropped quietly.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("alert_engine.sdnotify")


class Notifier:
    """Sends sd_notify messages to `address` (a path, or bytes starting with NUL for the abstract namespace).

    `address=None` makes every method a no-op. `watchdog_usec` is systemd's WatchdogSec= in µs, or None.
    Each method returns whether the message was sent.
    """

    def __init__(self, address: str | bytes | None, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """Reads `$NOTIFY_SOCKET` (`@name` is the abstract socket `\\0name`) and `$WATCHDOG_USEC`, which is
        honoured only when `$WATCHDOG_PID` is unset or is our pid (otherwise it was meant for a parent)."""
        raw = environ.get("NOTIFY_SOCKET") or None
        address: str | bytes | None = raw
        if raw is not None and raw.startswith("@"):
            address = b"\0" + os.fsencode(raw[1:])
        return cls(address, _watchdog_usec(environ))

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between `watchdog()` pings (half of WatchdogSec=), or None when there is no watchdog."""
        if self._address is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def ready(self) -> bool:
        """Start-up (or a reload) is complete."""
        return self._send("READY=1")

    def reloading(self, monotonic_usec: int | None = None) -> bool:
        """A reload has begun; follow it with `ready()`. systemd ≥ 253 wants the CLOCK_MONOTONIC time in µs."""
        if monotonic_usec is None:
            monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._send(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")

    def stopping(self) -> bool:
        """Shutdown has begun."""
        return self._send("STOPPING=1")

    def status(self, text: str) -> bool:
        """A one-line status shown by `systemctl status` (newlines would start new assignments)."""
        return self._send("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        """We are alive: resets the WatchdogSec= timer."""
        return self._send("WATCHDOG=1")

    def _send(self, message: str) -> bool:
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(message.encode(), self._address)
        except OSError as error:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd (%s); further failures are not logged", error)
            return False
        return True


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    """`$WATCHDOG_USEC` as a positive int, when it is meant for this process; else None."""
    pid = environ.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None
