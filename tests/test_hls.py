"""HLS streams (``.m3u8``) as a job's video, without the engine (issue 19 item 3): a local HLS server
(tests/hls_server.py) with VOD, growing live and hostile playlists. The reader follows a live playlist by
media sequence and stops at #EXT-X-ENDLIST, ``max_seconds`` or a stall; every segment URL obeys the URL
rules (private addresses, sizes, time); encrypted, fMP4 and byte-range streams are refused, typed. A
commentary job comments a live stream while it plays; a caption job captions what it read."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import m3u8
import pytest

import worker.media.hls
import worker.media.sources
from tests.fakes import FakeEngineSlot, RecordingFakeEngine
from tests.hls_server import MASTER, HlsServer, base_url, make_segments, serving
from tests.test_commentary import CommentaryFakeEngine
from tests.test_sources import FAKE_PUBLIC_HOST, fake_non_public
from worker.api.errors import DecodeError, FetchError, UnsupportedInputError, ValidationError
from worker.api.schema import MediaSource, parse_request
from worker.config import Settings
from worker.devtools.dummy_model import build_dummy_model
from worker.job.service import CaptionService
from worker.media.hls import HlsRead, HlsReader, Segment, is_hls_url, is_playlist, pick_variant
from worker.media.hls_stream import LiveStream, fetch_video, open_video
from worker.media.pool import DecodePool
from worker.media.probe import packet_index, probe
from worker.media.sources import job_workspace

pytestmark = pytest.mark.timeout(300)
SEGMENTS = 12


@pytest.fixture(scope="module")
def segments(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return make_segments(tmp_path_factory.mktemp("hls"), SEGMENTS)


@pytest.fixture
def settings(media_dir: Path, work_dir: Path) -> Settings:
    # The HLS server is on 127.0.0.1; the default, refusing it, has its own tests below.
    return Settings(allowed_media_roots=[media_dir], work_dir=work_dir, download_timeout=10.0, allow_private_urls=True)


@pytest.fixture
def server(segments: list[bytes]) -> Iterator[HlsServer]:
    with serving(segments, interval=0.3) as running:
        yield running


def read(
    url: str, settings: Settings, *, max_seconds: float = 100.0, want_pixels: int = 200_000
) -> tuple[HlsRead, list[Segment], list[int]]:
    """The reading, its segments, and the size of each segment's file when it arrived."""
    got: list[Segment] = []
    sizes: list[int] = []

    def arrived(segment: Segment) -> None:
        got.append(segment)
        sizes.append(segment.path.stat().st_size)

    with job_workspace(settings) as workspace:
        reader = HlsReader(
            url, workspace, settings, max_seconds=max_seconds, want_pixels=want_pixels, on_segment=arrived
        )
        return reader.run(), got, sizes


# ---- the playlist, read ------------------------------------------------------------------------------


def test_hls_is_known_by_its_path_or_its_body(tmp_path: Path) -> None:
    assert is_hls_url("https://cdn.example/live/index.M3U8?token=x") and not is_hls_url("https://x/a.mp4?f=.m3u8")
    (tmp_path / "a").write_bytes(b"\xef\xbb\xbf  #EXTM3U\n#EXT-X-VERSION:3\n")
    (tmp_path / "b").write_bytes(b"\x00\x00\x00\x20ftypisom")
    assert is_playlist(tmp_path / "a") and not is_playlist(tmp_path / "b")


def test_a_vod_playlist_is_read_from_its_start(server: HlsServer, settings: Settings, segments: list[bytes]) -> None:
    result, got, sizes = read(base_url(server) + "/vod.m3u8", settings)
    assert result.stopped == "endlist" and not result.live and result.warnings == []
    assert [s.sequence for s in got] == list(range(SEGMENTS)) and result.seconds == SEGMENTS
    assert [s.start for s in got] == [float(i) for i in range(SEGMENTS)]
    assert sizes == [len(s) for s in segments] and result.bytes == sum(sizes)
    # Relative URIs resolve against the playlist's URL; each segment is fetched once.
    assert server.segment_requests() == [f"/seg/{i}.ts" for i in range(SEGMENTS)]


def test_the_segments_make_one_playable_file(server: HlsServer, settings: Settings) -> None:
    with job_workspace(settings) as workspace:
        source = MediaSource("url", base_url(server) + "/vod.m3u8")
        path, warnings = asyncio.run(fetch_video(source, workspace, settings, max_seconds=5, want_pixels=1))
        info = probe(path)
        times = packet_index(path, info).times
        left = sorted(p.name for p in workspace.iterdir())
    assert warnings == [] and path.name == "stream.ts" and left == ["playlist.m3u8", "stream.ts"]
    assert len(times) == 50 and times[0] == 0.0 and abs(times[-1] - 4.9) < 1e-6


def test_a_live_playlist_is_followed_until_it_ends(server: HlsServer, settings: Settings) -> None:
    """Each reload brings the segments published since: each fetched once, in media-sequence order, the
    first before the server had published the last; #EXT-X-ENDLIST ends the reading."""
    published: list[int] = []
    got: list[Segment] = []

    def arrived(segment: Segment) -> None:
        got.append(segment)
        published.append(server.published)

    with job_workspace(settings) as workspace:
        url = base_url(server) + "/live.m3u8"
        result = HlsReader(url, workspace, settings, max_seconds=100, want_pixels=1, on_segment=arrived).run()
    assert result.live and result.stopped == "endlist"
    assert [s.sequence for s in got] == list(range(SEGMENTS))
    assert server.segment_requests() == [f"/seg/{i}.ts" for i in range(SEGMENTS)]
    assert published[0] < SEGMENTS and server.requests.count("/live.m3u8") > 2


def test_a_sliding_live_window_is_followed_by_media_sequence(segments: list[bytes], settings: Settings) -> None:
    """The playlist lists its last three segments only; the reader goes by media sequence numbers."""
    with serving(segments[:6], interval=0.6) as server:
        result, got, _ = read(base_url(server) + "/live-window.m3u8", settings)
    assert result.stopped == "endlist" and [s.sequence for s in got] == list(range(6))
    assert [s.start for s in got] == [float(i) for i in range(6)]


def test_segments_that_left_the_window_unread_end_the_reading(segments: list[bytes], settings: Settings) -> None:
    """A reader that fell behind a sliding window does not splice the stream across the hole."""
    with serving(segments, interval=0.1) as server:
        result, got, _ = read(base_url(server) + "/live-window.m3u8", settings)
    assert [s.sequence for s in got] == [0, 1] and result.stopped == "failed"
    assert "left the live playlist before they were read" in result.warnings[0]


def test_max_seconds_ends_a_live_stream(server: HlsServer, settings: Settings) -> None:
    result, got, _ = read(base_url(server) + "/live-stall.m3u8", settings, max_seconds=4)
    assert result.stopped == "max_seconds" and result.seconds == 4 and result.expected_seconds == 4
    assert server.segment_requests() == [f"/seg/{i}.ts" for i in range(4)]


def test_a_live_playlist_that_stops_growing_ends_the_reading(segments: list[bytes], settings: Settings) -> None:
    with serving(segments[:4], interval=0.2) as server:
        result, got, _ = read(base_url(server) + "/live-stall.m3u8", settings)
    assert result.stopped == "stalled" and len(got) == 4
    assert "stopped growing" in result.warnings[0] and "read up to 4.0 s" in result.warnings[0]


def test_a_live_playlist_is_joined_at_its_live_edge(segments: list[bytes], settings: Settings) -> None:
    """RFC 8216 §6.3.3: no closer to the end than three target durations."""
    with serving(segments, initial=8, interval=0.3) as server:
        result, got, _ = read(base_url(server) + "/live-stall.m3u8", settings, max_seconds=3)
    assert [s.sequence for s in got] == [5, 6, 7] and [s.start for s in got] == [0.0, 1.0, 2.0]


def test_a_stream_slower_than_it_plays_is_bounded_in_time(segments: list[bytes], settings: Settings) -> None:
    """The whole reading ends by max_seconds + DOWNLOAD_TIMEOUT; what arrived by then stands."""
    slow = settings.model_copy(update={"download_timeout": 1.0})
    with serving(segments, initial=1, interval=2.5) as server:
        result, got, _ = read(base_url(server) + "/live-stall.m3u8", slow, max_seconds=3)
    assert result.stopped == "deadline" and 1 <= len(got) < 3
    assert "max_seconds + DOWNLOAD_TIMEOUT" in result.warnings[0]


def test_the_variant_is_the_smallest_that_holds_the_frames() -> None:
    variants = m3u8.loads(MASTER).playlists

    def name(variant: m3u8.Playlist | None) -> str:
        assert variant is not None
        return str(variant.uri).split("/")[0]

    assert name(pick_variant(variants, 200_704, 8192 * 4096)) == "mid"  # 640x360 holds 448x448's pixels
    assert name(pick_variant(variants, 301_056, 8192 * 4096)) == "big"
    assert name(pick_variant(variants, 50_000, 8192 * 4096)) == "small"
    assert name(pick_variant(variants, 301_056, 1280 * 720)) == "mid"  # 1080p is above MAX_SOURCE_PIXELS
    audio = [v for v in variants if name(v) == "audio"]
    assert pick_variant(audio, 1, 10**9) is None
    unsized = m3u8.loads("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\na.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=9\nb.m3u8\n")
    assert name(pick_variant(unsized.playlists, 1, 10**9)) == "b.m3u8"


def test_a_master_playlist_reads_its_chosen_variant(server: HlsServer, settings: Settings) -> None:
    result, got, _ = read(base_url(server) + "/master.m3u8", settings, want_pixels=200_704)
    assert result.url.endswith("/mid/vod.m3u8") and len(got) == SEGMENTS
    assert all(path.startswith(("/master.m3u8", "/mid/")) for path in server.requests)


# ---- the URL rules, for every segment -----------------------------------------------------------------


@pytest.fixture
def default_settings(media_dir: Path, work_dir: Path) -> Settings:
    """ALLOW_PRIVATE_URLS left at its default."""
    return Settings(allowed_media_roots=[media_dir], work_dir=work_dir, download_timeout=10.0)


def test_a_private_segment_of_an_allowed_playlist_is_refused(
    segments: list[bytes], default_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The playlist's host is public (127.0.0.2 stands in for one); a segment it names on a loopback address
    is refused before any connection, as a redirect there would be."""
    monkeypatch.setattr(worker.media.sources, "non_public", fake_non_public)
    with serving(segments, FAKE_PUBLIC_HOST) as public, serving(segments) as internal:
        public.elsewhere = base_url(internal)
        with pytest.raises(FetchError, match="resolves to a loopback address") as info:
            read(base_url(public) + "/private.m3u8", default_settings)
        assert "ALLOW_PRIVATE_URLS" in info.value.message and internal.requests == []
        # The same public server's own segments are read under the same rules.
        result, got, _ = read(base_url(public) + "/vod.m3u8", default_settings, max_seconds=2)
        assert len(got) == 2


def test_a_loopback_playlist_is_refused_by_default(server: HlsServer, default_settings: Settings) -> None:
    with pytest.raises(FetchError, match="resolves to a loopback address"):
        read(base_url(server) + "/vod.m3u8", default_settings)
    assert server.requests == []


def test_the_segments_together_are_capped_by_max_download_bytes(
    server: HlsServer, settings: Settings, segments: list[bytes]
) -> None:
    capped = settings.model_copy(update={"max_download_bytes": len(segments[0]) + len(segments[1]) + 100})
    result, got, _ = read(base_url(server) + "/vod.m3u8", capped)
    assert len(got) == 2 and result.stopped == "failed"
    assert "MAX_DOWNLOAD_BYTES" in result.warnings[0] and "for the whole stream" in result.warnings[0]
    tiny = settings.model_copy(update={"max_download_bytes": 100})
    with pytest.raises(FetchError, match="MAX_DOWNLOAD_BYTES=100 for the whole stream"):
        read(base_url(server) + "/vod.m3u8", tiny)


def test_a_playlist_is_capped(server: HlsServer, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker.media.hls, "PLAYLIST_MAX_BYTES", 200)
    with pytest.raises(FetchError, match="the playlist limit of 200 bytes"):
        read(base_url(server) + "/vod.m3u8", settings)


@pytest.mark.parametrize(
    "name,error,words",
    [
        ("encrypted", UnsupportedInputError, "encrypted (#EXT-X-KEY METHOD=AES-128)"),
        ("fmp4", UnsupportedInputError, "fMP4 segments (#EXT-X-MAP)"),
        ("byterange", UnsupportedInputError, "byte range (#EXT-X-BYTERANGE)"),
        ("not-ts", DecodeError, "is not MPEG-TS"),
        ("nothing-here", FetchError, "HTTP 404"),
    ],
)
def test_streams_the_worker_cannot_read_are_typed_errors(
    server: HlsServer, settings: Settings, name: str, error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as info:
        read(base_url(server) + f"/{name}.m3u8", settings)
    assert words in str(info.value)
    if error is UnsupportedInputError:
        assert server.segment_requests() == []  # refused before any byte of a segment


def test_a_discontinuity_ends_the_reading_there(server: HlsServer, settings: Settings) -> None:
    result, got, _ = read(base_url(server) + "/discontinuity.m3u8", settings)
    assert len(got) == 2 and "#EXT-X-DISCONTINUITY" in result.warnings[0]


def test_a_playlist_without_segments_is_a_fetch_error(server: HlsServer, settings: Settings) -> None:
    with job_workspace(settings) as workspace, pytest.raises(FetchError, match="has no segment"):
        source = MediaSource("url", base_url(server) + "/empty.m3u8")
        asyncio.run(fetch_video(source, workspace, settings, max_seconds=None, want_pixels=1))


def test_a_playlist_is_known_by_its_body(server: HlsServer, settings: Settings) -> None:
    with job_workspace(settings) as workspace:
        source = MediaSource("url", base_url(server) + "/live/playlist?id=3")
        path, _ = asyncio.run(fetch_video(source, workspace, settings, max_seconds=3, want_pixels=1))
        assert path.name == "stream.ts" and len(server.segment_requests()) == 3


def test_leaving_a_live_stream_stops_its_reader(server: HlsServer, settings: Settings) -> None:
    """A job that is done (or cancelled) while the stream plays stops the reader, which writes nothing more:
    the workspace is then removed whole (the work_dir fixture checks)."""

    async def job() -> list[Path]:
        source = MediaSource("url", base_url(server) + "/live-stall.m3u8")
        async with open_video(source, workspace, settings, max_seconds=None, want_pixels=1) as feed:
            assert isinstance(feed, LiveStream)
            return await feed.grow()

    with job_workspace(settings) as workspace:
        assert asyncio.run(job())
        count = len(server.segment_requests())
    threading.Event().wait(1.0)
    assert len(server.segment_requests()) == count


# ---- the request field ---------------------------------------------------------------------------------


def test_max_seconds_is_checked() -> None:
    url = {"video": "https://cdn.example/live.m3u8"}
    assert parse_request(url | {"max_seconds": 30}, max_frames_limit=100).max_seconds == 30
    cases = [
        (url | {"max_seconds": 61}, "must be at most 60 (MAX_VIDEO_SECONDS"),
        (url | {"max_seconds": 0}, "greater than 0"),
        ({"video": "/tmp/a.mp4", "max_seconds": 5}, "max_seconds applies to HLS streams"),
        ({"image_url": "https://x/a.m3u8", "max_seconds": 5}, "max_seconds applies to HLS streams"),
        ({"context": [{"start": 0, "end": 1, "caption": "x"}], "max_seconds": 5}, "does not apply to a context job"),
    ]
    for raw, words in cases:
        with pytest.raises(ValidationError) as info:
            parse_request(raw, max_frames_limit=100, max_video_seconds=60)
        assert words in info.value.message, (raw, info.value.message)


# ---- jobs ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen2_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dummy_model(tmp_path_factory.mktemp("models") / "tiny-qwen2_vl", "qwen2_vl", "tiny")


class WatchingEngine(CommentaryFakeEngine):
    """Notes how many segments the server had published when each turn reached the engine."""

    def __init__(self, folder: Path, server: HlsServer) -> None:
        super().__init__(folder, lambda k: f" turn {k} ...")
        self.server = server
        self.published: list[int] = []

    async def generate(self, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self.published.append(self.server.published)
        return await super().generate(inputs, *args, **kwargs)


def run_job(engine: Any, settings: Settings, job: dict[str, Any]) -> list[dict[str, Any]]:
    service = CaptionService(settings, FakeEngineSlot(engine), DecodePool(0))

    async def collect() -> list[dict[str, Any]]:
        return [p.body async for p in service.run(job)]

    return asyncio.run(collect())


def test_a_live_stream_is_commented_as_it_plays(
    qwen2_vl: Path, segments: list[bytes], settings: Settings
) -> None:
    """Turns run once their seconds have arrived, the first long before the stream has played to
    max_seconds; they cover the stream up to max_seconds and stop there."""
    with serving(segments, interval=0.7) as server:
        engine = WatchingEngine(qwen2_vl, server)
        job = {"video": base_url(server) + "/live-stall.m3u8", "mode": "commentary", "stream": True, "max_seconds": 8}
        parts = run_job(engine, settings, job)
    body = parts[-1]
    assert "error" not in body, body
    turns = body["turns"]
    assert [(t["start"], t["end"]) for t in turns] == [(0.0, 3.0)] + [(float(s), s + 1.0) for s in range(3, 8)]
    assert [p["turn"] for p in parts[:-1]] == turns and parts[-2]["num_turns"] == 6
    assert turns[0]["frame_timestamps"] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert engine.published[0] < 8  # the first turn was commented while the stream still played
    meta = body["metadata"]
    assert meta["complete"] is True and meta["num_turns"] == 6 and meta["video"]["duration"] == 8.0
    assert server.segment_requests() == [f"/seg/{i}.ts" for i in range(8)]


def test_a_caption_job_reads_a_stream_up_to_max_seconds(
    tiny_model: Path, server: HlsServer, settings: Settings
) -> None:
    engine = RecordingFakeEngine(tiny_model)
    body = run_job(engine, settings, {"video": base_url(server) + "/vod.m3u8", "max_seconds": 5, "fps": 2})[-1]
    assert "error" not in body, body
    assert body["metadata"]["video"]["duration"] == pytest.approx(5.0, abs=0.11)
    assert max(body["metadata"]["frame_timestamps"]) < 5.0
    assert server.segment_requests() == [f"/seg/{i}.ts" for i in range(5)]


def test_max_seconds_on_a_video_file_url_is_noted(
    tiny_model: Path, settings: Settings, hostile_server: str
) -> None:
    engine = RecordingFakeEngine(tiny_model)
    body = run_job(engine, settings, {"video": hostile_server + "/clip.mp4", "max_seconds": 5})[-1]
    assert any("max_seconds applies to HLS streams" in w for w in body["metadata"]["warnings"]), body


def test_a_refused_stream_fails_the_job_typed(qwen2_vl: Path, server: HlsServer, settings: Settings) -> None:
    engine = CommentaryFakeEngine(qwen2_vl, lambda k: "x")
    body = run_job(engine, settings, {"video": base_url(server) + "/encrypted.m3u8", "mode": "commentary"})[-1]
    assert body["error"]["type"] == "unsupported_input" and "encrypted" in body["error"]["message"]
    assert engine.requests == []

