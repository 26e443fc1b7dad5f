"""The no-egress guard (corral/egress.py) tested on itself: a fresh pytest with the plugin, whose tests reach for
the network in the ways code does (a swallowed refused connect, a DNS lookup, a datagram, a Python subprocess), must
fail each of them, and pass the one that talks to loopback only."""

from __future__ import annotations

import os

import pytest

from corral import egress

INNER = '''
import socket, subprocess, sys, threading

OUT = ("203.0.113.1", 9)  # TEST-NET-3: never a real host


def test_a_swallowed_connect():
    try:
        socket.create_connection(OUT, timeout=1)
    except OSError:
        pass


def test_a_name_lookup():
    try:
        socket.getaddrinfo("example.com", 443)
    except OSError:
        pass


def test_a_datagram():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", OUT)
    except OSError:
        pass
    finally:
        s.close()


def test_a_subprocess_connect():
    code = "import socket\\ntry:\\n    socket.create_connection(%r, timeout=1)\\nexcept OSError:\\n    pass\\n" % (OUT,)
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_loopback_is_fine():
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    threading.Thread(target=lambda: srv.accept()[0].close(), daemon=True).start()
    socket.create_connection(("localhost", port), timeout=5).close()
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    srv.close()
'''


def test_the_guard_fails_every_test_that_reaches_out_and_only_those(pytester, monkeypatch):
    # the inner pytest starts clean: not inside this session's guard, log and sitecustomize
    for name in (egress.ENV, egress.LOG_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and "corral-no-egress-" not in p))
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-p", "corral.egress", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5, errors=4)  # every call passed (errors swallowed); 4 fail in teardown
    out = result.stdout.str()
    for needle in ("a connection to 203.0.113.1:9", "a name lookup of 'example.com'", "a datagram to 203.0.113.1:9",
                   "ERROR at teardown of test_a_subprocess_connect"):
        assert needle in out, out
    assert "ERROR at teardown of test_loopback_is_fine" not in out


@pytest.mark.parametrize("host, local", [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
                                         ("::ffff:127.0.0.1", True), ("localhost", True), ("", True),
                                         ("10.0.0.1", False), ("192.168.1.1", False), ("::ffff:8.8.8.8", False),
                                         ("2001:db8::1", False), ("example.com", False), ("0.0.0.0", False)])
def test_what_counts_as_this_machine(host, local):
    """Private ranges are off the machine too: a LAN is someone else's network."""
    assert egress._loopback(host) is local


def test_this_session_is_guarded(monkeypatch):
    """The suite runs under the plugin (tests/conftest.py), subprocesses included (the sitecustomize)."""
    import socket

    assert os.environ.get(egress.ENV) == "1" and egress.LOG_ENV in os.environ
    assert os.environ.get("HF_HUB_OFFLINE") == "1" and os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    monkeypatch.delenv(egress.LOG_ENV)  # this deliberate attempt is taken back below, not logged
    with pytest.raises(egress.EgressBlocked, match="203.0.113.7"):
        socket.create_connection(("203.0.113.7", 80), timeout=1)
    assert egress.attempts.pop() == "a connection to 203.0.113.7:80"
