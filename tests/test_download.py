"""Downloads from a local HTTP server (127.0.0.1, in a thread that stops by itself): verified, atomic, clear errors;
safe tar extraction."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stn.data.download import DownloadError, Remote, UnsafeArchiveError, download, extract_tar, fetch_and_extract

SERVER_LIFETIME_S = 30.0  # the server shuts itself down after this, whatever the test does


class _Handler(BaseHTTPRequestHandler):
    """GET <path> -> routes[path] = (body, mode); mode 'truncate' announces the full length, sends half, closes."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.hits.append(self.path)
        body, mode = self.server.routes.get(self.path, (None, ""))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if mode == "truncate" else body)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def local_server(routes: dict[str, tuple[bytes, str]]) -> Iterator[tuple[str, list[str]]]:
    """(base URL, list of requested paths) of an HTTP server on 127.0.0.1 serving `routes`; bounded lifetime."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.routes, server.hits = routes, []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(SERVER_LIFETIME_S, server.shutdown)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", server.hits
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(5)


PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB, more than one read chunk


def remote_for(url: str, body: bytes = PAYLOAD, **changes: object) -> Remote:
    expected = {
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "md5": hashlib.md5(body).hexdigest(),
        **changes,
    }
    return Remote((url,), "payload.bin", published_in="the test", **expected)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_good_download_is_verified_and_lands_complete(tmp_path):
    with local_server({"/payload.bin": (PAYLOAD, "")}) as (base, hits):
        target = download(remote_for(f"{base}/payload.bin"), tmp_path / "dl" / "payload.bin", progress=False)
        assert target.read_bytes() == PAYLOAD and leftovers(tmp_path / "dl") == ["payload.bin"]
        download(remote_for(f"{base}/payload.bin"), target, progress=False)  # present and verified: no request
        assert hits == ["/payload.bin"]


@pytest.mark.parametrize(
    ("changes", "what"),
    [({"sha256": "0" * 64}, "sha256"), ({"md5": "f" * 32}, "md5"), ({"size": len(PAYLOAD) + 1}, "size")],
)
def test_a_checksum_or_size_mismatch_keeps_nothing_and_says_what_to_do(tmp_path, changes, what):
    with local_server({"/payload.bin": (PAYLOAD, "")}) as (base, _):
        url, target = f"{base}/payload.bin", tmp_path / "dl" / "payload.bin"
        with pytest.raises(DownloadError) as error:
            download(remote_for(url, **changes), target, progress=False, hint="Or set data.x_source.")
    message = str(error.value)
    assert url in message and str(target) in message and f"{what}: expected {changes[what]}, got " in message
    assert "Retry" in message and "place it at" in message and "data.x_source" in message
    assert leftovers(tmp_path / "dl") == []  # no partial or temporary file


def test_an_interrupted_transfer_keeps_nothing(tmp_path):
    with local_server({"/payload.bin": (PAYLOAD, "truncate")}) as (base, _):
        target = tmp_path / "dl" / "payload.bin"
        with pytest.raises(DownloadError) as error:
            download(remote_for(f"{base}/payload.bin"), target, progress=False)
    message = str(error.value)
    assert "stopped early" in message and f"expected {len(PAYLOAD)} bytes" in message and str(target) in message
    assert leftovers(tmp_path / "dl") == []


def test_mirrors_are_tried_in_order_and_unreachable_hosts_give_a_clear_error(tmp_path):
    with local_server({"/good/payload.bin": (PAYLOAD, "")}) as (base, hits):
        remote = remote_for(f"{base}/missing/payload.bin")
        remote = Remote((remote.urls[0], f"{base}/good/payload.bin"), remote.filename, remote.size, remote.sha256)
        assert download(remote, tmp_path / "a" / "payload.bin", progress=False).read_bytes() == PAYLOAD
        assert hits == ["/missing/payload.bin", "/good/payload.bin"]
    with pytest.raises(DownloadError, match="127.0.0.1:9/payload.bin") as error:
        download(remote_for("http://127.0.0.1:9/payload.bin"), tmp_path / "b" / "payload.bin", progress=False)
    assert "Nothing partial was kept" in str(error.value) and leftovers(tmp_path / "b") == []


def test_a_wrong_file_already_in_place_is_refused_not_overwritten(tmp_path):
    target = tmp_path / "payload.bin"
    target.write_bytes(b"something else")
    with pytest.raises(DownloadError, match="Delete it and run again"):
        download(remote_for("http://127.0.0.1:9/payload.bin"), target, progress=False)
    assert target.read_bytes() == b"something else"


def make_tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def test_extraction_is_safe_and_atomic(tmp_path):
    good = make_tar(tmp_path / "good.tar.gz", {"train/a.txt": b"a", "train/sub/b.txt": b"b", "top.txt": b"t"})
    dest = tmp_path / "out"
    assert [p.name for p in extract_tar(good, dest)] == ["top.txt", "train"]
    assert (dest / "train" / "sub" / "b.txt").read_bytes() == b"b" and leftovers(dest) == ["top.txt", "train"]
    for name, members, links in [
        ("up.tar.gz", {"../evil.txt": b"x"}, None),
        ("abs.tar.gz", {"/tmp/evil.txt": b"x"}, None),
        ("link.tar.gz", {"ok.txt": b"x"}, {"train/link": "/etc/passwd"}),
    ]:
        archive = make_tar(tmp_path / name, members, links)
        with pytest.raises(UnsafeArchiveError, match="refused"):
            extract_tar(archive, tmp_path / "unsafe")
        assert leftovers(tmp_path / "unsafe") == [] and not (tmp_path / "evil.txt").exists()


def test_a_damaged_archive_leaves_no_half_extracted_folder(tmp_path):
    big = bytes(range(256)) * 2048
    whole = make_tar(tmp_path / "whole.tar.gz", {"train/a.bin": big, "train/b.bin": big[::-1]}).read_bytes()
    damaged = tmp_path / "damaged.tar.gz"
    damaged.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(DownloadError, match="damaged"):
        extract_tar(damaged, tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_fetch_and_extract_downloads_verifies_and_extracts(tmp_path):
    body = make_tar(tmp_path / "a.tar.gz", {"train/x.txt": b"x"}).read_bytes()
    with local_server({"/a.tar.gz": (body, "")}) as (base, _):
        remote = Remote((f"{base}/a.tar.gz",), "a.tar.gz", len(body), hashlib.sha256(body).hexdigest())
        entries = fetch_and_extract(remote, tmp_path / "data" / "a.tar.gz", tmp_path / "data", progress=False)
    assert [p.name for p in entries] == ["train"] and (tmp_path / "data" / "train" / "x.txt").read_bytes() == b"x"
