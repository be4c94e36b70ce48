"""
Listening sockets: TCP (plain, or with C{SO_REUSEPORT} for pre-forked
workers), UNIX sockets and their files, and the line that announces each.

Invariants: every function that opens a socket either returns it or closes
it and raises L{StartupError} with a one-line message naming the address;
a socket file is removed only if it is still the one this process made
(L{socket_file} records which, L{remove_socket_files} checks), so a server
that took the path meanwhile keeps it. Used by the single-process runner,
the supervisor and L{twisted_shim.wsgi.service.WSGIService}; it imports
neither them nor the reactor.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterable

from twisted_shim.wsgi.addresses import TCPAddress, bracket
from twisted_shim.wsgi.startup import StartupError

__all__ = [
    "SocketFile",
    "hold_port",
    "listening_line",
    "open_listeners",
    "open_tcp",
    "open_unix",
    "probe_tcp",
    "remove_socket_files",
    "socket_file",
]

#: A socket file made, and its C{lstat} when it was made (C{None}: unknown).
SocketFile = tuple[str, os.stat_result | None]


def open_tcp(
    address: TCPAddress,
    backlog: int,
    *,
    reuse_port: bool = False,
    listen: bool = True,
) -> socket.socket:
    """
    A socket bound to C{address} (and listening, unless C{listen} is false).

    @raise StartupError: if it cannot be bound.
    """
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if address.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address.sockaddr)
        if listen:
            sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot listen on {address}: {e}") from None
    return sock


def probe_tcp(address: TCPAddress) -> None:
    """
    Bind C{address} without C{SO_REUSEPORT} and close it again, so a port
    another program holds (with or without C{SO_REUSEPORT}) is reported
    rather than shared.

    @raise StartupError: if the port is in use.
    """
    open_tcp(address, 0, listen=False).close()


def hold_port(address: TCPAddress) -> socket.socket:
    """
    Bind C{address} (port 0) with C{SO_REUSEPORT} and without
    C{SO_REUSEADDR}, never listening: the port the system picks stays
    reserved for sockets of this user with C{SO_REUSEPORT} (the workers) as
    long as the socket is open.
    """
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if address.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address.sockaddr)
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot listen on {address}: {e}") from None
    return sock


def open_unix(path: str, backlog: int) -> socket.socket:
    """
    A UNIX socket listening at C{path}. A stale socket file (no one accepts
    on it) is removed first; a live one, or another kind of file, is an error.

    @raise StartupError: if it cannot listen there.
    """
    where = f"unix:{path}"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StartupError(f"cannot listen on {where}: {e}") from None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise StartupError(
                f"cannot listen on {where}: the file exists and is not a socket"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise StartupError(
                    f"cannot remove the stale socket {path}: {e}"
                ) from None
        except OSError:
            pass  # bind below reports it
        else:
            raise StartupError(
                f"cannot listen on {where}: another server is listening there"
            )
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot listen on {where}: {e}") from None
    return sock


def socket_file(path: str) -> SocketFile:
    """
    C{path} and what is there now (C{None} if nothing): call it right after
    making the socket file, so that L{remove_socket_files} removes that file
    and no other.
    """
    try:
        return path, os.lstat(path)
    except OSError:
        return path, None


def remove_socket_files(made: Iterable[SocketFile]) -> None:
    """Remove each socket file of C{made} that is still the one we made."""
    for path, sock_stat in made:
        if sock_stat is None:
            continue
        try:
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) == (sock_stat.st_dev, sock_stat.st_ino):
                os.unlink(path)
        except OSError:
            pass


def open_listeners(
    binds: Iterable[TCPAddress], uds: Iterable[str], backlog: int
) -> tuple[list[socket.socket], list[SocketFile]]:
    """
    Listen on every TCP address of C{binds} and UNIX socket path of C{uds},
    or on none: return the listening sockets and the socket files made.

    @raise StartupError: an address is unusable (what was opened is closed
        and removed again).
    """
    sockets: list[socket.socket] = []
    made: list[SocketFile] = []
    try:
        for address in binds:
            sockets.append(open_tcp(address, backlog))
        for path in uds:
            sockets.append(open_unix(path, backlog))
            made.append(socket_file(path))
    except Exception:
        for sock in sockets:
            sock.close()
        remove_socket_files(made)
        raise
    return sockets, made


def listening_line(sock: socket.socket) -> str:
    """C{listening on http://HOST:PORT} or C{listening on unix:PATH}."""
    if sock.family == socket.AF_UNIX:
        return f"listening on unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return f"listening on http://{bracket(host)}:{port}"
