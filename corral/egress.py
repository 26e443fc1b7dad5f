"""No egress: a socket-level guard that refuses every connection off this machine, and the pytest plugin that fails
any test whose process (or a Python subprocess it starts) tried one.

What it catches: `connect`/`connect_ex`/`sendto`/`sendmsg` on a socket to an address that is not loopback (127.0.0.0/8,
::1) or a Unix socket, and name lookups (`getaddrinfo`, the DNS query itself is egress) of anything but a numeric
address or localhost. An attempt raises `EgressBlocked` (a `ConnectionRefusedError`, so a client library sees an
ordinary refused connection) and is recorded, so code that swallows the error still fails the test.

Where it runs:
- `CORRAL_NO_EGRESS=1 corral ...`: the CLI installs the guard before it does anything else.
- pytest with this plugin (`-p corral.egress`; corral's own suite loads it in tests/conftest.py): installed for the
  whole session; `CORRAL_NO_EGRESS`, `CORRAL_EGRESS_LOG` and a `sitecustomize` on `PYTHONPATH` carry it into every
  Python subprocess, which appends its attempts to the log; a test with attempts in its process or the log fails.
  Programs that are not Python (llama-server, the peers' builds) are covered only by a network namespace: the
  no-network CI job (`scripts/offline_cli.sh`, README "What corral sends anywhere").
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

ENV, LOG_ENV = "CORRAL_NO_EGRESS", "CORRAL_EGRESS_LOG"
LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
attempts: list[str] = []  # this process's blocked attempts, oldest first
_real: dict[str, Any] = {}


class EgressBlocked(ConnectionRefusedError):
    """A connection or lookup off this machine, refused by corral's no-egress guard."""


def _loopback(host: Any) -> bool:
    if host in (None, "", b""):  # bind-all / unspecified: not a destination
        return True
    if isinstance(host, bytes):
        host = host.decode()
    host = str(host).split("%")[0]  # an IPv6 scope id
    if host.lower() in LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _numeric(host: Any) -> bool:
    try:
        ipaddress.ip_address((host.decode() if isinstance(host, bytes) else str(host)).split("%")[0])
        return True
    except ValueError:
        return False


def _block(what: str) -> None:
    attempts.append(what)
    if log := os.environ.get(LOG_ENV):
        try:
            with open(log, "a") as f:
                f.write(f"pid {os.getpid()}: {what}\n")
        except OSError:
            pass
    raise EgressBlocked(f"corral's no-egress guard refused {what}: only loopback connections are allowed here")


def _check_address(sock: socket.socket, address: Any, verb: str) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) and address:
        if not _loopback(address[0]):
            _block(f"{verb} to {address[0]}:{address[1] if len(address) > 1 else '?'}")
    elif sock.family not in (socket.AF_INET, socket.AF_INET6, getattr(socket, "AF_UNIX", -1)):
        _block(f"{verb} on a socket of family {sock.family!r}")  # netlink, packet, bluetooth ...


def install() -> None:
    """Patch the socket module of this process (idempotent)."""
    if _real:
        return
    _real.update(connect=socket.socket.connect, connect_ex=socket.socket.connect_ex, sendto=socket.socket.sendto,
                 sendmsg=socket.socket.sendmsg, getaddrinfo=socket.getaddrinfo)

    def connect(self, address):
        _check_address(self, address, "a connection")
        return _real["connect"](self, address)

    def connect_ex(self, address):
        _check_address(self, address, "a connection")
        return _real["connect_ex"](self, address)

    def sendto(self, data, *args):
        _check_address(self, args[-1], "a datagram")
        return _real["sendto"](self, data, *args)

    def sendmsg(self, buffers, ancdata=(), flags=0, address=None):
        if address is not None:
            _check_address(self, address, "a datagram")
            return _real["sendmsg"](self, buffers, ancdata, flags, address)
        return _real["sendmsg"](self, buffers, ancdata, flags)

    def getaddrinfo(host, *args, **kwargs):
        if not (_loopback(host) or _numeric(host)):
            _block(f"a name lookup of {host!r}")
        return _real["getaddrinfo"](host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    socket.socket.sendto, socket.socket.sendmsg = sendto, sendmsg
    socket.getaddrinfo = getaddrinfo


def install_from_env() -> None:
    """Install the guard when `CORRAL_NO_EGRESS` is set (the CLI's and the subprocesses' entry point)."""
    if os.environ.get(ENV, "") not in ("", "0"):
        install()


# ---- the pytest plugin -------------------------------------------------------------------------------------------

SITECUSTOMIZE = "import corral.egress\ncorral.egress.install_from_env()\n"


def pytest_configure(config) -> None:
    """Guard this process and, through the environment, every Python subprocess the tests start; pin the HF
    libraries (transformers, peft, huggingface_hub: tests use them as references) offline."""
    folder = Path(tempfile.mkdtemp(prefix="corral-no-egress-"))
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    os.environ[ENV] = "1"
    os.environ[LOG_ENV] = str(folder / "attempts.log")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    install()
    config.pluginmanager.register(_checker(), "corral-no-egress-checker")


def _log_lines() -> list[str]:
    try:
        return Path(os.environ[LOG_ENV]).read_text().splitlines()
    except (KeyError, OSError):
        return []


def _checker():
    import pytest

    seen = pytest.StashKey[tuple[int, int]]()

    class Checker:
        """Counts the attempts before a test's setup and fails the test in teardown (after its fixtures are torn
        down, whose attempts count too) if there are new ones."""

        @pytest.hookimpl(tryfirst=True)
        def pytest_runtest_setup(self, item) -> None:
            item.stash[seen] = (len(attempts), len(_log_lines()))

        @pytest.hookimpl(wrapper=True)
        def pytest_runtest_teardown(self, item, nextitem):
            result = yield
            mine, logged = item.stash.get(seen, (len(attempts), len(_log_lines())))
            if new := attempts[mine:] + _log_lines()[logged:]:
                pytest.fail("the test tried to reach the network (corral.egress):\n  " + "\n  ".join(new),
                            pytrace=False)
            return result

    return Checker()
