"""A local HLS server for the tests: MPEG-TS segments cut from a generated clip at its keyframes (one a
second), served as a VOD playlist, as live playlists that a thread grows one segment at a time once the
first client asks, as a master playlist, and as the playlists the reader must refuse."""

from __future__ import annotations

import http.server
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av

from worker.devtools.media import make_video


def cut_segments(path: Path, seconds: float = 1.0) -> list[bytes]:
    """The MPEG-TS file at ``path`` cut into MPEG-TS segments of ``seconds`` each, before the first
    keyframe of each span (timestamps kept, so the segments played one after another are the file)."""
    segments: list[bytes] = []
    with av.open(str(path)) as source:
        video = source.streams.video[0]
        out: Any = None
        buffer = io.BytesIO()
        target: Any = None
        first: float | None = None
        for packet in source.demux(video):
            if packet.dts is None or packet.pts is None:
                continue
            at = float(packet.pts * video.time_base)
            first = at if first is None else first
            if out is None or (packet.is_keyframe and at - first >= len(segments) * seconds + seconds - 1e-6):
                if out is not None:
                    out.close()
                    segments.append(buffer.getvalue())
                buffer = io.BytesIO()
                out = av.open(buffer, "w", format="mpegts")
                target = out.add_stream_from_template(video)
            packet.stream = target
            out.mux(packet)
        out.close()
        segments.append(buffer.getvalue())
    return segments


def make_segments(folder: Path, seconds: int, *, width: int = 112, height: int = 112, seed: int = 0) -> list[bytes]:
    """``seconds`` one-second H.264 segments of a generated 10 fps clip."""
    clip = make_video(
        folder / f"hls-{seconds}s-{width}x{height}-{seed}.ts", seconds=seconds, fps=10, width=width, height=height,
        gop=10, seed=seed, encoder_options={"x264-params": "scenecut=0:bframes=0"},
    )  # fmt: skip  # a keyframe every second, and only then
    return cut_segments(clip)


def media_playlist(
    uris: list[str], *, first: int = 0, ended: bool, head: str = "", tags: dict[int, str] | None = None
) -> str:
    """A media playlist of one-second segments ``uris`` numbered from ``first``; ``tags[i]``: lines before
    segment i; ``head``: lines after the header."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:1", f"#EXT-X-MEDIA-SEQUENCE:{first}"]
    lines += [head] if head else []
    for i, uri in enumerate(uris):
        lines += [(tags or {}).get(i, "")] if (tags or {}).get(i) else []
        lines += ["#EXTINF:1.000,", uri]
    return "\n".join(lines + (["#EXT-X-ENDLIST"] if ended else [])) + "\n"


MASTER = """#EXTM3U
#EXT-X-STREAM-INF:BANDWIDTH=64000,CODECS="mp4a.40.2"
audio/vod.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=4000000,RESOLUTION=1920x1080,CODECS="avc1.640028,mp4a.40.2"
big/vod.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=900000,RESOLUTION=640x360,CODECS="avc1.4d401e,mp4a.40.2"
mid/vod.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=300000,RESOLUTION=320x180,CODECS="avc1.4d400d,mp4a.40.2"
small/vod.m3u8
"""


class HlsServer(http.server.ThreadingHTTPServer):
    """``segments`` one second each. The live playlists start with ``initial`` segments when first asked
    for, and a thread publishes one more every ``interval`` seconds; ``/live.m3u8`` ends (#EXT-X-ENDLIST)
    once all are out, ``/live-stall.m3u8`` just stops growing, ``/live-window.m3u8`` lists only the last
    three. ``elsewhere``: the base URL that ``/private.m3u8`` names for its segments."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], segments: list[bytes], *, initial: int, interval: float) -> None:
        super().__init__(address, HlsHandler)
        self.segments, self.initial, self.interval = segments, initial, interval
        self.requests: list[str] = []
        self.published = 0
        self.elsewhere = ""
        self._started = threading.Event()
        self._stop = threading.Event()
        self._publisher = threading.Thread(target=self._publish, daemon=True)
        self._publisher.start()

    def _publish(self) -> None:
        self._started.wait()
        self.published = min(self.initial, len(self.segments))
        while self.published < len(self.segments) and not self._stop.wait(self.interval):
            self.published += 1

    def start_live(self) -> int:
        """Segments out now (the first ask starts the clock)."""
        if not self._started.is_set():
            self.published = min(self.initial, len(self.segments))
            self._started.set()
        return self.published

    def segment_requests(self) -> list[str]:
        return [p for p in self.requests if p.endswith(".ts")]

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that give up (size caps, cancels) reset connections: that is the point

    def server_close(self) -> None:
        self._stop.set()
        self._started.set()
        super().server_close()


class HlsHandler(http.server.BaseHTTPRequestHandler):
    server: HlsServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        path = self.path.split("?", 1)[0]
        name = path.rsplit("/", 1)[-1]
        count = len(self.server.segments)
        uris = [f"seg/{i}.ts" for i in range(count)]
        if name.endswith(".ts") and "/seg/" in path:
            index = int(name.removesuffix(".ts"))
            if index < count:
                return self.reply(200, self.server.segments[index], "video/mp2t")
        elif name == "vod.m3u8":
            return self.playlist(media_playlist(uris, ended=True))
        elif name in ("live.m3u8", "live-stall.m3u8"):
            out = self.server.start_live()
            ended = name == "live.m3u8" and out == count
            return self.playlist(media_playlist(uris[:out], ended=ended))
        elif name == "live-window.m3u8":
            out = self.server.start_live()
            first = max(0, out - 3)
            return self.playlist(media_playlist(uris[first:out], first=first, ended=out == count))
        elif name == "master.m3u8":
            return self.playlist(MASTER)
        elif name == "encrypted.m3u8":
            return self.playlist(media_playlist(uris, ended=True, head='#EXT-X-KEY:METHOD=AES-128,URI="key.bin"'))
        elif name == "fmp4.m3u8":
            return self.playlist(media_playlist(uris, ended=True, head='#EXT-X-MAP:URI="init.mp4"'))
        elif name == "byterange.m3u8":
            return self.playlist(media_playlist(uris, ended=True, tags={0: "#EXT-X-BYTERANGE:1000@0"}))
        elif name == "discontinuity.m3u8":
            return self.playlist(media_playlist(uris, ended=True, tags={2: "#EXT-X-DISCONTINUITY"}))
        elif name == "not-ts.m3u8":
            return self.playlist(media_playlist(["notts/0.ts"], ended=True))
        elif name == "private.m3u8":
            elsewhere = [f"{self.server.elsewhere}/seg/{i}.ts" for i in range(count)]
            return self.playlist(media_playlist(elsewhere, ended=True))
        elif name == "empty.m3u8":
            return self.playlist(media_playlist([], ended=True))
        elif name == "playlist":  # no .m3u8 in the path: known by its body
            return self.playlist(media_playlist(uris, ended=True), "text/plain")
        elif name == "0.ts" and "/notts/" in path:
            return self.reply(200, b"ID3\x04\x00" + b"\0" * 1000, "audio/aac")
        self.reply(404, b"not found", "text/plain")

    def playlist(self, text: str, content_type: str = "application/vnd.apple.mpegurl") -> None:
        self.reply(200, text.encode(), content_type)

    def reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", content_type)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serving(
    segments: list[bytes], host: str = "127.0.0.1", *, initial: int = 2, interval: float = 1.0
) -> Iterator[HlsServer]:
    server = HlsServer((host, 0), segments, initial=initial, interval=interval)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def base_url(server: HlsServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"
