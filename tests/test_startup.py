"""engine/startup.py: the state dir's lock (one holder, named by pid, gone with its process) and the
listening sockets (a port in use is one line)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from engine.reload import StartupError
from engine.startup import LOCK_FILE, listen, lock_state_dir, unlock


def test_the_lock_creates_the_state_dir_holds_the_pid_and_refuses_a_second_holder(tmp_path):
    state = tmp_path / "state"
    fd = lock_state_dir(str(state))
    try:
        assert state.stat().st_mode & 0o777 == 0o700
        assert (state / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(StartupError) as refused:
            lock_state_dir(str(state))  # flock is per open file: a second open is refused, even in one process
        assert refused.value.messages == [f"state dir {state} is in use by pid {os.getpid()}"]
    finally:
        unlock(fd)
    unlock(lock_state_dir(str(state)))  # released: the next one gets it


def test_the_lock_of_a_process_that_died_is_free_and_its_stale_pid_is_replaced(tmp_path):
    state = tmp_path / "state"
    code = ("import os, sys; from engine.startup import lock_state_dir; lock_state_dir(sys.argv[1]); "
            "os.kill(os.getpid(), 9)")
    died = subprocess.run([sys.executable, "-c", code, str(state)], timeout=30)
    assert died.returncode == -9
    assert (state / LOCK_FILE).read_text().strip().isdigit()  # the dead holder's pid, left behind
    fd = lock_state_dir(str(state))
    assert (state / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    unlock(fd)


def test_a_state_dir_that_cannot_be_made_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StartupError) as refused:
        lock_state_dir(str(blocker / "state"))
    [message] = refused.value.messages
    assert message.startswith(f"cannot lock state dir {blocker / 'state'}: ")


def test_listen_binds_and_listens_and_a_port_in_use_is_one_line():
    sockets = listen("127.0.0.1", 0)
    try:
        [sock] = sockets
        port = sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # listening already: the connection waits in the backlog
        with pytest.raises(StartupError) as refused:
            listen("127.0.0.1", port)
        assert refused.value.messages == [f"cannot listen on 127.0.0.1:{port}: Address already in use"]
    finally:
        for sock in sockets:
            sock.close()


def test_an_address_that_does_not_resolve_is_one_line():
    with pytest.raises(StartupError) as refused:
        listen("no-such-host.invalid", 9595)
    [message] = refused.value.messages
    assert message.startswith("cannot listen on no-such-host.invalid:9595: ")
