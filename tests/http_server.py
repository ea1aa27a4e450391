"""A local HTTP server with well-behaved and hostile endpoints, for the URL source of jobs."""

from __future__ import annotations

import functools
import gzip
import http.server
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Long enough to outlast any client timeout a test sets; short enough that no handler thread lingers.
STALL_SECONDS = 20.0
GZIP_BOMB_BYTES = 200 * 1024**2


@functools.cache
def gzip_bomb() -> bytes:
    """GZIP_BOMB_BYTES of zeros, gzipped to about 200 kB (built once; it takes seconds)."""
    return gzip.compress(b"\0" * GZIP_BOMB_BYTES, compresslevel=9)


class HostileServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's backlog of 5 drops connections from a busy test (16 jobs at once); each dropped SYN is
    # retried only after 1 s, then 2 s more, which a download deadline then counts.
    request_queue_size = 128
    clip: bytes = b""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (path, Host header) of every request, so tests can tell whether and how a download reached it.
        self.requests: list[tuple[str, str | None]] = []

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that give up (timeouts, size caps) reset connections; that is the point, not an error.
        pass


class Handler(http.server.BaseHTTPRequestHandler):
    server: HostileServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Host")))
        path = self.path.split("?", 1)[0]
        route = getattr(self, "route_" + path.strip("/").replace("-", "_").replace(".", "_"), None)
        if route is None:
            self.reply(404, b"not found")
        else:
            route()

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in ({"Content-Length": str(len(body))} | (headers or {})).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str) -> None:
        self.reply(302, b"", {"Location": location})

    def route_clip_mp4(self) -> None:
        self.reply(200, self.server.clip, {"Content-Type": "video/mp4"})

    def route_slow_clip_mp4(self) -> None:
        time.sleep(1.0)
        self.route_clip_mp4()

    def route_redirect(self) -> None:
        self.redirect("/clip.mp4")

    def route_redirect_chain(self) -> None:  # 3 hops, within the limit of 5
        self.redirect("/redirect-2")

    def route_redirect_2(self) -> None:
        self.redirect("/redirect")

    def route_redirect_loop(self) -> None:
        self.redirect("/redirect-loop")

    def route_redirect_file(self) -> None:
        self.redirect("file:///etc/passwd")

    def route_redirect_to(self) -> None:
        """Redirects to the URL given as the query string (``/redirect-to?http://...``)."""
        self.redirect(urllib.parse.unquote(self.path.split("?", 1)[1]))

    def route_redirect_ftp(self) -> None:
        self.redirect("ftp://127.0.0.1/clip.mp4")

    def route_huge_declared(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(10**12))
        self.end_headers()
        self.wfile.write(b"\0" * 1000)

    def route_huge_streamed(self) -> None:
        # Chunked, no Content-Length: only the running count can stop it.
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"\0" * 65536
        try:
            for _ in range(10_000):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            return

    def route_gzip_bomb(self) -> None:
        self.reply(200, gzip_bomb(), {"Content-Encoding": "gzip"})

    def route_empty(self) -> None:
        self.reply(200, b"")

    def route_stall_headers(self) -> None:
        time.sleep(STALL_SECONDS)

    def route_stall_body(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"\0" * 1000)
        self.wfile.flush()
        time.sleep(STALL_SECONDS)

    def route_drop(self) -> None:
        # Promise 100 kB, send 1 kB, close the connection.
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(self.server.clip[:1000])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(2)

    def route_drip(self) -> None:
        # A byte every 0.2 s: never a stall long enough for a read timeout, never done.
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        deadline = time.monotonic() + STALL_SECONDS
        try:
            while time.monotonic() < deadline:
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            return

    def route_drip_headers(self) -> None:
        # Slowloris the other way round: the response headers never end, a byte every 0.2 s.
        deadline = time.monotonic() + STALL_SECONDS
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while time.monotonic() < deadline:
                self.wfile.write(b"a")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            return

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def running(clip: bytes, host: str = "127.0.0.1", port: int = 0) -> Iterator[HostileServer]:
    httpd = HostileServer((host, port), Handler)
    httpd.clip = clip
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def serve(clip: bytes, host: str = "127.0.0.1") -> Iterator[str]:
    with running(clip, host) as httpd:
        yield f"http://{host}:{httpd.server_address[1]}"
