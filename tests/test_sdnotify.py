"""engine/sdnotify.py against a real datagram socket standing in for systemd's notify socket."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket (as systemd's) and its path, for NOTIFY_SOCKET."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield sock, path


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


@pytest.mark.parametrize(
    ("send", "expected"),
    [
        (Notifier.ready, "READY=1"),
        (lambda n: n.reloading(123456789), "RELOADING=1\nMONOTONIC_USEC=123456789"),
        (Notifier.stopping, "STOPPING=1"),
        (lambda n: n.status("3 rules, 2 services"), "STATUS=3 rules, 2 services"),
        (Notifier.watchdog, "WATCHDOG=1"),
    ],
)
def test_each_message_arrives_exactly(
    listener: tuple[socket.socket, str], send: Callable[[Notifier], bool], expected: str
) -> None:
    sock, path = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert send(notifier) is True
    assert received(sock) == expected


def test_reloading_defaults_to_the_monotonic_clock_in_microseconds(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier.from_env({"NOTIFY_SOCKET": path}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = received(sock).split("\n")
    assert first == "RELOADING=1"
    assert second.startswith("MONOTONIC_USEC=")
    assert before <= int(second.removeprefix("MONOTONIC_USEC=")) <= after


def test_status_is_kept_on_one_line(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    Notifier.from_env({"NOTIFY_SOCKET": path}).status("reload failed:\n2 errors")
    assert received(sock) == "STATUS=reload failed: 2 errors"


def test_abstract_namespace_socket() -> None:
    name = f"alert-engine-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert Notifier.from_env({"NOTIFY_SOCKET": "@" + name}).ready() is True
        assert received(sock) == "READY=1"


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_env({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    sent = [notifier.ready(), notifier.reloading(), notifier.stopping(), notifier.status("x"), notifier.watchdog()]
    assert sent == [False] * 5


@pytest.mark.parametrize(
    ("extra_env", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": str(os.getpid())}, 2.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_when_meant_for_us(
    listener: tuple[socket.socket, str], extra_env: dict[str, str], interval: float | None
) -> None:
    _, path = listener
    assert Notifier.from_env({"NOTIFY_SOCKET": path, **extra_env}).watchdog_interval == interval


def test_a_vanished_socket_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
    path.unlink()
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    with caplog.at_level(logging.WARNING, logger="alert_engine.sdnotify"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
    warnings = [r for r in caplog.records if r.name == "alert_engine.sdnotify"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
