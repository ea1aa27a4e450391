"""Getting media onto disk: base64, allowed paths, downloads from a real local HTTP server."""

from __future__ import annotations

import base64
import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.http_server import HostileServer
from worker.config import Settings
from worker.api.errors import FetchError
from worker.media.sources import fetch_media, job_workspace
from worker.api.schema import MediaSource

PAYLOAD = os.urandom(50_000)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.startswith("/video"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/video")
            self.end_headers()
        elif self.path == "/huge-declared":
            self.send_response(200)
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
        elif self.path == "/huge-streamed":
            self.send_response(200)
            self.end_headers()  # no Content-Length: the cap must hold while streaming
            for _ in range(100):
                self.wfile.write(b"x" * 10_000)
        elif self.path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            time.sleep(3)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    # tests.http_server's server class: it does not print a traceback when a client drops a connection,
    # which the size caps and timeouts here do on purpose.
    httpd = HostileServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    root = tmp_path / "allowed"
    root.mkdir()
    return Settings(
        allowed_media_roots=[root],
        work_dir=tmp_path / "work",
        max_download_bytes=200_000,
        download_timeout=1.0,
        max_base64_bytes=100_000,
        allow_private_urls=True,  # the test server is on 127.0.0.1
    )


def fetch(source: MediaSource, settings: Settings) -> bytes:
    with job_workspace(settings) as workspace:
        return fetch_media(source, workspace, settings).path.read_bytes()


def test_base64(settings: Settings) -> None:
    assert fetch(MediaSource("base64", base64.b64encode(PAYLOAD).decode()), settings) == PAYLOAD


def test_base64_with_line_breaks(settings: Settings) -> None:
    assert fetch(MediaSource("base64", base64.encodebytes(PAYLOAD).decode()), settings) == PAYLOAD


@pytest.mark.parametrize("payload,match", [("not base64!!", "not valid base64"), ("", "zero bytes")])
def test_bad_base64(settings: Settings, payload: str, match: str) -> None:
    with pytest.raises(FetchError, match=match):
        fetch(MediaSource("base64", payload), settings)


def test_base64_size_is_checked_before_decoding(settings: Settings) -> None:
    with pytest.raises(FetchError, match="MAX_BASE64_BYTES"):
        fetch(MediaSource("base64", "A" * 200_000), settings)


def test_path_under_allowed_root(settings: Settings) -> None:
    path = settings.allowed_media_roots[0] / "clip.mp4"
    path.write_bytes(PAYLOAD)
    assert fetch(MediaSource("path", str(path)), settings) == PAYLOAD


@pytest.mark.parametrize("make", ["outside", "dotdot", "symlink", "missing", "directory"])
def test_path_outside_or_invalid_is_refused(settings: Settings, tmp_path: Path, make: str) -> None:
    root = settings.allowed_media_roots[0]
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    target = {
        "outside": str(secret),
        "dotdot": f"{root}/../secret.txt",
        "symlink": str(root / "link.mp4"),
        "missing": str(root / "nope.mp4"),
        "directory": str(root),
    }[make]
    if make == "symlink":
        (root / "link.mp4").symlink_to(secret)
    with pytest.raises(FetchError) as info:
        fetch(MediaSource("path", target), settings)
    assert "secret" not in info.value.message.replace("secret.txt", "")


def test_download(settings: Settings, server: str) -> None:
    assert fetch(MediaSource("url", f"{server}/video.mp4"), settings) == PAYLOAD
    assert fetch(MediaSource("url", f"{server}/redirect"), settings) == PAYLOAD


@pytest.mark.parametrize(
    "path,match",
    [
        ("/missing", "HTTP 404"),
        ("/huge-declared", "MAX_DOWNLOAD_BYTES"),
        ("/huge-streamed", "MAX_DOWNLOAD_BYTES"),
        ("/stall", "timed out"),
    ],
)
def test_download_failures(settings: Settings, server: str, path: str, match: str) -> None:
    started = time.monotonic()
    with pytest.raises(FetchError, match=match):
        fetch(MediaSource("url", server + path), settings)
    assert time.monotonic() - started < 10


def test_url_query_is_not_echoed(settings: Settings, server: str) -> None:
    with pytest.raises(FetchError) as info:
        fetch(MediaSource("url", f"{server}/missing?X-Amz-Signature=topsecret"), settings)
    assert "topsecret" not in info.value.message


def test_workspace_is_removed_even_on_failure(settings: Settings) -> None:
    with pytest.raises(FetchError):
        fetch(MediaSource("base64", "!!"), settings)
    assert list(settings.work_dir.iterdir()) == []
