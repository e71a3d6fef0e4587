"""Network guard for the test suite: Python processes may reach loopback addresses only.

Loaded at start-up of every Python process the tests start (``tests/conftest.py`` puts this folder first on
``PYTHONPATH``, so Python imports it as ``sitecustomize``) and in the pytest process itself. A connection or
name lookup for any other host is refused with ``OSError(ENETUNREACH)`` and appended as one line to the file
named by ``STEAM_PERSONA_NETLOG``; conftest fails the test during which that file grew. So a library that
quietly tries the network and swallows the error (bitsandbytes' hub-kernel fetch) still fails the suite.
"""

import errno
import ipaddress
import os
import socket

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


def _is_local(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip("[]").split("%")[0]
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return addr.is_loopback or addr.is_unspecified


def _refuse(what: str):
    log = os.environ.get("STEAM_PERSONA_NETLOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {what}\n")
    raise OSError(errno.ENETUNREACH, f"test network guard: {what} refused (tests may reach loopback only)")


def _guard_address(sock, address) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
        _refuse(f"connect {address[0]}:{address[1]}")


_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def _guarded_connect(self, address):
    _guard_address(self, address)
    return _connect(self, address)


def _guarded_connect_ex(self, address):
    _guard_address(self, address)
    return _connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if not _is_local(host):
        _refuse(f"lookup {host}")
    return _getaddrinfo(host, *args, **kwargs)


if not getattr(socket, "_steam_persona_guard", False):
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex
    socket.getaddrinfo = _guarded_getaddrinfo
    socket._steam_persona_guard = True
