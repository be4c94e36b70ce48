"""
Request bodies in bounded memory: past C{--body-buffer} a body is spooled to
an unnamed temporary file in C{--body-dir} as it arrives, and C{wsgi.input}
reads from it.

Every test talks to a real server process over real sockets. What is
asserted: the application reads exactly the bytes sent (SHA-256), from a
file reader or from memory as the buffer decides; nothing is ever visible in
the body directory; descriptors come back to what they were; the peak RSS of
many concurrent uploads stays bounded; a body that cannot be stored (disk
full, directory gone) is answered 503 or 500 with one log line naming the
cause, and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import StartServer
from wsgi_client import (
    HOST,
    TIMEOUT,
    ResponseReader,
    build_request,
    connect,
    exchange,
    get,
    reset,
    wait_until,
)

MiB = 1024 * 1024
#: The block an upload repeats (its content varies within the block, so a
#: misplaced piece changes the digest).
BLOCK = bytes(range(256)) * (MiB // 256)


def upload(
    port: int, size: int, *, chunked: bool = False, piece: int = 256 * 1024
) -> tuple[Any, str]:
    """POST C{size} bytes (C{BLOCK} repeated) to C{/digest}, streamed in
    C{piece}-sized writes; the response's JSON and the body's SHA-256."""
    h = hashlib.sha256()
    framing = (
        ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(size))
    )
    sock = connect(port, timeout=60)
    try:
        sock.sendall(build_request("POST", "/digest", headers=[framing]))
        sent = 0
        while sent < size:
            offset = sent % len(BLOCK)
            data = BLOCK[offset : offset + min(piece, size - sent, len(BLOCK) - offset)]
            h.update(data)
            sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            sent += len(data)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        resp = ResponseReader(sock).read_response("POST")
    finally:
        sock.close()
    assert resp.status == 200, resp.raw[:300]
    return resp.json(), h.hexdigest()


def status_of_upload(port: int, size: int) -> tuple[int, bytes]:
    """POST C{size} bytes; the status and body of the answer (which may come
    before the whole body was sent: the server then closes)."""
    sock = connect(port, timeout=TIMEOUT)
    try:
        sock.sendall(
            build_request("POST", "/digest", headers=[("Content-Length", str(size))])
        )
        try:
            for start in range(0, size, len(BLOCK)):
                sock.sendall(BLOCK[: min(len(BLOCK), size - start)])
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before the end of the body
        resp = ResponseReader(sock).read_response("POST")
        return resp.status, resp.body
    finally:
        sock.close()


def listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


@pytest.fixture
def body_dir(tmp_path: Path) -> Path:
    path = tmp_path / "bodies"
    path.mkdir()
    return path


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_a_body_past_the_buffer_is_spooled_and_read_intact(
    wsgi_server: StartServer, body_dir: Path, chunked: bool
) -> None:
    """A 3 MiB body with a 64 KiB buffer reaches the application whole and
    in order, through a file reader; the file never has a name in the body
    directory, and its descriptor is closed once the request is over."""
    server = wsgi_server(fresh=True, body_buffer="64K", body_dir=body_dir)
    before = server.fd_count()
    seen: list[list[str]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(listing(body_dir))
            done.wait(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        got, digest = upload(server.port, 3 * MiB + 17, chunked=chunked, piece=100_000)
    finally:
        done.set()
        watcher.join()
    assert got["sha256"] == digest
    assert got["length"] == 3 * MiB + 17
    assert got["content_length"] == str(3 * MiB + 17)
    assert got["input"] == "BufferedReader"
    assert all(names == [] for names in seen), [n for n in seen if n]
    wait_until(
        lambda: server.fd_count() <= before, what="the body file's descriptor closed"
    )


def test_a_spooled_body_is_closed_when_its_request_ends(
    wsgi_server: StartServer, body_dir: Path
) -> None:
    """An application that keeps C{wsgi.input} past its request does not
    keep the spooled file open: the host closes it when the request ends."""
    server = wsgi_server(fresh=True, body_buffer="64K", body_dir=body_dir)
    before = server.fd_count()
    for _ in range(3):
        resp, reader = exchange(
            server.port, build_request("POST", "/keep-input", body=b"k" * (MiB + 1))
        )
        reader.sock.close()
        assert resp.json()["input"] == "BufferedReader"
    wait_until(
        lambda: server.fd_count() <= before,
        what=f"the kept streams' files closed: {server.fds()}",
    )


def test_a_client_leaving_mid_body_leaves_no_file(
    wsgi_server: StartServer, body_dir: Path
) -> None:
    """A client that sends half of a spooled body and goes away (FIN, then
    RST) takes the file with it: descriptors come back to what they were."""
    server = wsgi_server(fresh=True, body_buffer="64K", body_dir=body_dir)
    before = server.fd_count()
    for close in ("fin", "rst"):
        sock = connect(server.port)
        sock.sendall(
            build_request("POST", "/digest", headers=[("Content-Length", str(4 * MiB))])
        )
        sock.sendall(BLOCK * 2)
        wait_until(lambda: server.fd_count() > before, what="the body's file made")
        if close == "rst":
            reset(sock)
        else:
            sock.close()
        wait_until(
            lambda: server.fd_count() <= before,
            what=f"the file closed after a {close}: {server.fds()}",
        )


def test_expect_continue_is_refused_before_the_body_when_it_cannot_be_stored(
    wsgi_server: StartServer, tmp_path: Path
) -> None:
    """With C{Expect: 100-continue}, a body that would be spooled where no
    file can be made is answered 500 instead of C{100 Continue}: the client
    is not asked to send what cannot be kept."""
    gone = tmp_path / "gone"
    gone.mkdir()
    server = wsgi_server(body_buffer="64K", body_dir=gone, expect_errors=True)
    gone.rmdir()
    sock = connect(server.port)
    sock.sendall(
        build_request(
            "POST",
            "/digest",
            headers=[("Content-Length", str(MiB)), ("Expect", "100-continue")],
        )
    )
    resp = ResponseReader(sock).read_response("POST")
    sock.close()
    assert resp.status == 500


def test_a_body_within_the_buffer_stays_in_memory(
    wsgi_server: StartServer, body_dir: Path
) -> None:
    """A body no longer than the buffer is read from memory (C{BytesIO})."""
    server = wsgi_server(body_buffer="64K", body_dir=body_dir)
    got, digest = upload(server.port, 64 * 1024)
    assert (got["input"], got["sha256"]) == ("BytesIO", digest)
    got, digest = upload(server.port, 64 * 1024 + 1)
    assert (got["input"], got["sha256"]) == ("BufferedReader", digest)


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_concurrent_uploads_in_bounded_memory(
    wsgi_server: StartServer, body_dir: Path, chunked: bool
) -> None:
    """40 concurrent 16 MiB uploads (640 MiB) with the default buffer: each
    arrives intact, and the server's peak RSS (VmHWM) stays within 100 MiB;
    the whole bodies held in memory would take over 640 MiB. Chunked bodies
    go through the decoder's buffer before the file: the same bound."""
    server = wsgi_server(fresh=True, body_dir=body_dir)
    results: list[tuple[Any, str]] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(upload(server.port, 16 * MiB, chunked=chunked))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert len(results) == 40
    for got, digest in results:
        assert (got["length"], got["sha256"]) == (16 * MiB, digest)
    with open(f"/proc/{server.pid}/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    assert peak <= 100 * 1024, f"peak RSS {peak / 1024:.0f} MiB"


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (mounted for the test; root only)."""
    path = tmp_path / "small"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_is_503_and_leaves_nothing(
    wsgi_server: StartServer, full_disk: Path
) -> None:
    """A body that does not fit on the body directory's file system is
    answered 503 with the connection closed, logged once with the cause;
    the space it took is free again, and the server goes on serving."""
    server = wsgi_server(body_buffer="64K", body_dir=full_disk, expect_errors=True)
    status, body = status_of_upload(server.port, 3 * MiB)
    assert status == 503, body
    log = server.wait_for_log("No space left on device")
    line = next(line for line in log.splitlines() if "No space left" in line)
    assert "request refused: cannot write a request body" in line
    assert str(full_disk) in line
    st = os.statvfs(full_disk)
    wait_until(
        lambda: os.statvfs(full_disk).f_bfree == st.f_blocks,
        what="the tmpfs empty again",
    )
    assert listing(full_disk) == []
    assert get(server.port, "/hello").status == 200


def test_a_missing_body_directory_is_500(
    wsgi_server: StartServer, tmp_path: Path
) -> None:
    """If the body directory goes away while the server runs, a body that
    must be spooled is answered 500, with a log line naming the directory;
    bodies that fit in memory are still served."""
    gone = tmp_path / "gone"
    gone.mkdir()
    server = wsgi_server(body_buffer="64K", body_dir=gone, expect_errors=True)
    shutil.rmtree(gone)
    status, _ = status_of_upload(server.port, MiB)
    assert status == 500
    log = server.wait_for_log("cannot create a temporary file for a request body")
    assert str(gone) in log
    resp, reader = exchange(
        server.port, build_request("POST", "/digest", body=b"x" * 100)
    )
    reader.sock.close()
    assert resp.json()["length"] == 100


def test_a_body_directory_that_is_not_one_is_refused_at_start(tmp_path: Path) -> None:
    """C{serve --body-dir} naming no directory fails at start with a message
    that names it, before listening."""
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "twisted_shim",
            "serve",
            "wsgi_apps:app",
            "--bind",
            f"{HOST}:0",
            "--body-dir",
            str(missing),
        ],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_sizes_take_units() -> None:
    """--max-body and --body-buffer take K, M, G and T (binary) suffixes;
    anything else is refused with a message naming the value."""
    from twisted_shim.wsgi.config import byte_size

    assert byte_size("8G") == 8 << 30
    assert byte_size("64k") == 64 << 10
    assert byte_size("1MiB") == 1 << 20
    assert byte_size("1048576") == 1 << 20
    for bad in ("", "G", "-1", "1.5G", "12X"):
        with pytest.raises(ValueError, match="not a size in bytes"):
            byte_size(bad)
