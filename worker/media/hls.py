"""Reading an HTTP(S) HLS stream (``.m3u8``) as it plays: the playlist polled at its target duration, each
new MPEG-TS segment fetched once, in media-sequence order, through the same checked download as any URL
(worker/media/sources.py: public addresses only unless ALLOW_PRIVATE_URLS, every redirect and every URL
the playlist names checked, sizes capped, time bounded). The reading stops at ``max_seconds`` of media,
at #EXT-X-ENDLIST, or when a live playlist stops growing; docs/commentary.md ("HLS streams") has the rules.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import m3u8

from worker.api.errors import DecodeError, FetchError, UnsupportedInputError, WorkerError
from worker.config import Settings
from worker.media.sources import checked_url, download, safe_url

log = logging.getLogger(__name__)

PLAYLIST_MAX_BYTES = 4 * 1024**2  # a 3-hour VOD playlist of 2 s segments is about 0.5 MB
# A live playlist that has not grown for this many target durations has stopped (RFC 8216 §6.2.2: the
# server adds a segment at least every target duration).
STALL_TARGET_DURATIONS = 3.0
# Where a live playlist is joined: no closer to its end than this many target durations (RFC 8216 §6.3.3).
LIVE_EDGE_TARGET_DURATIONS = 3.0
# Target durations below or above these are taken as these: a playlist must not make the reader spin or sleep.
MIN_POLL_SECONDS, MAX_POLL_SECONDS = 0.5, 60.0
TS_SYNC, TS_PACKET = 0x47, 188
_AUDIO_ONLY_CODECS = ("mp4a", "ac-3", "ec-3", "opus", "flac", "mp3", ".mp3")


def is_hls_url(url: str) -> bool:
    """Whether ``url`` names an HLS playlist by its path (``.m3u8``, any case; the query is not part of it)."""
    try:
        return httpx.URL(url).path.lower().endswith(".m3u8")
    except (httpx.InvalidURL, ValueError):
        return False


def is_playlist(path: Path) -> bool:
    """Whether the file is an HLS playlist: it starts with ``#EXTM3U`` (RFC 8216 §4.3.1.1), as what a server
    sends as application/vnd.apple.mpegurl or application/x-mpegURL does, whatever Content-Type it names."""
    with path.open("rb") as f:
        head = f.read(64)
    return head.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"#EXTM3U")


@dataclass(frozen=True)
class Segment:
    """One MPEG-TS segment read, in a file of its own until its reader's caller takes it."""

    path: Path
    sequence: int  # media sequence number
    start: float  # seconds from the first segment read (the sum of the EXTINF durations before it)
    duration: float  # its EXTINF duration, seconds
    size: int  # bytes


@dataclass
class HlsRead:
    """What a reading of a stream got, and why it stopped."""

    url: str  # the media playlist read, without its query (safe_url)
    live: bool  # the playlist had no #EXT-X-ENDLIST when it was first read
    expected_seconds: float  # what the reading will get at most: max_seconds, or less for a shorter VOD playlist
    seconds: float = 0.0  # EXTINF seconds read
    segments: int = 0
    bytes: int = 0
    stopped: str = ""  # "endlist", "max_seconds", "stalled", "deadline", "cancelled" or "failed"
    warnings: list[str] = field(default_factory=list)


class HlsReader:
    """Reads one HLS stream into segment files, handing each to ``on_segment`` as it arrives. Blocking:
    ``run`` it in a worker thread; setting ``cancel`` ends it within a fraction of a second.

    ``max_seconds``: media to read (segments are taken while less has been read, so the last may end past
    it; never past MAX_VIDEO_SECONDS). ``want_pixels``: the frame size the job decodes at, which picks the
    variant of a master playlist. The whole reading ends within ``max_seconds`` + DOWNLOAD_TIMEOUT of wall
    time; its segments together within MAX_DOWNLOAD_BYTES."""

    def __init__(
        self,
        url: str,
        workspace: Path,
        settings: Settings,
        *,
        max_seconds: float,
        want_pixels: int,
        on_segment: Callable[[Segment], None],
        cancel: threading.Event | None = None,
    ) -> None:
        self.url, self.workspace, self.settings = url, workspace, settings
        self.max_seconds = min(max_seconds, settings.max_video_seconds)
        self.want_pixels = want_pixels
        self.on_segment = on_segment
        self.cancel = cancel or threading.Event()
        self.deadline = time.monotonic() + self.max_seconds + settings.download_timeout
        self.read: HlsRead | None = None  # set once the media playlist has been read

    def run(self) -> HlsRead:
        """Read until the stream ends, ``max_seconds`` or a stall. A failure before the first segment is
        raised (FetchError, DecodeError, UnsupportedInputError); after it, the reading stops there with a
        warning: what was read stands."""
        try:
            playlist, base = self._media_playlist()
            self._follow(playlist, base)
        except WorkerError as exc:
            if self.read is None or self.read.segments == 0:
                raise
            if self.cancel.is_set():
                self._stop("cancelled")
            else:
                self._stop("failed", f"{exc.message}; the stream is read up to {self.read.seconds:.1f} s")
        assert self.read is not None
        log.info(
            "HLS %s: %d segments, %.1f s, %d bytes; stopped: %s",
            self.read.url, self.read.segments, self.read.seconds, self.read.bytes, self.read.stopped,
        )  # fmt: skip
        return self.read

    # ---- playlists -----------------------------------------------------------------------------------

    def _load(self, url: str) -> tuple[m3u8.M3U8, httpx.URL]:
        """The playlist at ``url``, parsed, and the URL it came from (after redirects: the base of its URIs)."""
        path = self.workspace / "playlist.m3u8"
        got = download(
            url, path, self.settings, max_bytes=PLAYLIST_MAX_BYTES, timeout=self._time_left(),
            limit_name=f"the playlist limit of {PLAYLIST_MAX_BYTES} bytes", cancel=self.cancel,
        )  # fmt: skip
        if not is_playlist(path):
            raise DecodeError(f"{safe_url(got.url)} is not an HLS playlist (it does not start with #EXTM3U)")
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            playlist = m3u8.loads(text)
        # The parser raises whatever its conversions raise on a malformed line (ValueError, TypeError, ...).
        except Exception as exc:
            raise DecodeError(f"the HLS playlist {safe_url(got.url)} is malformed: {exc}") from None
        return playlist, got.url

    def _media_playlist(self) -> tuple[m3u8.M3U8, httpx.URL]:
        """The media playlist: the one given, or the variant a master playlist offers that suits the job."""
        playlist, base = self._load(self.url)
        if playlist.is_variant:
            variant = pick_variant(playlist.playlists, self.want_pixels, self.settings.max_source_pixels)
            if variant is None:
                raise UnsupportedInputError(f"the master playlist {safe_url(base)} offers no variant with video")
            info = variant.stream_info
            log.info(
                "HLS master %s: variant %s (%s, %s bit/s)", safe_url(base), variant.uri, info.resolution, info.bandwidth
            )
            playlist, base = self._load(str(_resolve(base, variant.uri)))
            if playlist.is_variant:
                raise UnsupportedInputError(f"the variant {safe_url(base)} is a master playlist again")
        return playlist, base

    def _follow(self, playlist: m3u8.M3U8, base: httpx.URL) -> None:
        """Fetch the playlist's new segments, then reload it as RFC 8216 §6.3.4 says (after a target
        duration when it changed, half of one when it did not), until it ends."""
        ended = _ended(playlist)
        durations = [_duration(s, base) for s in playlist.segments]
        expected = self.max_seconds if not ended else min(self.max_seconds, sum(durations))
        self.read = read = HlsRead(safe_url(base), not ended, expected)
        sequence, target = _media_sequence(playlist, base), _target(playlist)
        # A live playlist is joined where players join it; a finished one is read from its start.
        next_sequence = sequence + (0 if ended else _live_edge(durations, target))
        grew_at = loaded_at = time.monotonic()
        while True:
            new = [(sequence + i, s) for i, s in enumerate(playlist.segments) if sequence + i >= next_sequence]
            if new and new[0][0] > next_sequence and read.segments:
                gap = f"{next_sequence}-{new[0][0] - 1}"
                raise FetchError(f"segments {gap} left the live playlist before they were read")
            for number, segment in new:
                if read.seconds >= self.max_seconds or not self._take(number, segment, base):
                    break
                next_sequence = number + 1
            if read.seconds >= self.max_seconds:
                self._stop("max_seconds")
                return
            if read.stopped:
                return
            if new:
                grew_at = loaded_at
            if ended:
                self._stop("endlist")
                return
            stall = STALL_TARGET_DURATIONS * target
            if time.monotonic() - grew_at > stall:
                self._stop(
                    "stalled",
                    f"the live playlist stopped growing (no new segment for {stall:g} s, "
                    f"{STALL_TARGET_DURATIONS:g} target durations); the stream is read up to {read.seconds:.1f} s",
                )
                return
            wait = max(0.0, (target if new else target / 2) - (time.monotonic() - loaded_at))
            if self.deadline - time.monotonic() <= wait:
                bound = self.max_seconds + self.settings.download_timeout
                self._stop(
                    "deadline",
                    f"the stream did not give {self.max_seconds:g} s within {bound:g} s of reading "
                    f"(max_seconds + DOWNLOAD_TIMEOUT); it is read up to {read.seconds:.1f} s",
                )
                return
            if self.cancel.wait(wait):
                self._stop("cancelled")
                return
            loaded_at = time.monotonic()
            try:
                playlist, base = self._load(str(base))
            except FetchError as exc:
                # A reload that fails is tried again (the playlist as it was) until the stall timeout.
                if self.cancel.is_set():
                    self._stop("cancelled")
                    return
                log.info("HLS reload of %s failed (%s); trying again", read.url, exc.message)
                continue
            sequence, target, ended = _media_sequence(playlist, base), _target(playlist), _ended(playlist)

    def _take(self, number: int, segment: m3u8.Segment, base: httpx.URL) -> bool:
        """Fetch one segment and hand it on; False when the reading stops before or with it."""
        read = self.read
        assert read is not None
        duration = _duration(segment, base)
        if read.seconds + duration > self.settings.max_video_seconds:
            self._stop("max_seconds", f"the stream is read up to MAX_VIDEO_SECONDS={self.settings.max_video_seconds:g}")
            return False
        _check_supported(segment, base)
        if segment.discontinuity and read.segments:
            # Timestamps restart or jump there: one file across it would not play as one stream.
            where = f"after {read.seconds:.1f} s"
            self._stop("failed", f"the stream changes at a discontinuity (#EXT-X-DISCONTINUITY) {where}; read up to there")
            return False
        url = str(_resolve(base, segment.uri))
        path = self.workspace / f"segment-{number}.ts"
        budget = self.settings.max_download_bytes - read.bytes
        if budget <= 0:
            raise FetchError(f"the stream's segments exceed MAX_DOWNLOAD_BYTES={self.settings.max_download_bytes}")
        got = download(
            url, path, self.settings, max_bytes=budget, timeout=self._time_left(), cancel=self.cancel,
            limit_name=f"MAX_DOWNLOAD_BYTES={self.settings.max_download_bytes} for the whole stream",
        )  # fmt: skip
        with path.open("rb") as f:
            head = f.read(TS_PACKET + 1)
        if head[0] != TS_SYNC or (len(head) > TS_PACKET and head[TS_PACKET] != TS_SYNC):
            path.unlink()
            raise DecodeError(f"segment {number} ({safe_url(got.url)}) is not MPEG-TS, the only segment format read")
        self.on_segment(Segment(path, number, read.seconds, duration, got.size))
        read.segments += 1
        read.seconds += duration
        read.bytes += got.size
        return True

    def _stop(self, why: str, warning: str | None = None) -> None:
        assert self.read is not None
        self.read.stopped = why
        if warning:
            self.read.warnings.append(warning)

    def _time_left(self) -> float:
        """Seconds until the reading's deadline; past it, a FetchError."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            bound = self.max_seconds + self.settings.download_timeout
            raise FetchError(f"the stream was not read within max_seconds + DOWNLOAD_TIMEOUT ({bound:g} s)")
        return left


def pick_variant(variants: list[m3u8.Playlist], want_pixels: int, max_pixels: int) -> m3u8.Playlist | None:
    """The variant of a master playlist to read: among those with video (audio-only ones, by their CODECS,
    are left out) and within MAX_SOURCE_PIXELS, the smallest whose RESOLUTION has at least
    ``want_pixels`` (the job decodes no larger, so more would only cost bytes), else the largest; the
    lower BANDWIDTH between equals. Variants without RESOLUTION are taken only when none has one: then
    the highest BANDWIDTH."""

    def pixels(variant: m3u8.Playlist) -> int | None:
        resolution = variant.stream_info.resolution
        return resolution[0] * resolution[1] if resolution else None

    def bandwidth(variant: m3u8.Playlist) -> int:
        return variant.stream_info.bandwidth or variant.stream_info.average_bandwidth or 0

    video = [v for v in variants if not _audio_only(v.stream_info.codecs)]
    sized = [v for v in video if (pixels(v) or 0) and (pixels(v) or 0) <= max_pixels]
    if sized:
        enough = [v for v in sized if (pixels(v) or 0) >= want_pixels]
        if enough:
            return min(enough, key=lambda v: (pixels(v), bandwidth(v)))
        return max(sized, key=lambda v: (pixels(v), -bandwidth(v)))
    unsized = [v for v in video if pixels(v) is None]
    return max(unsized, key=bandwidth) if unsized else None


def _audio_only(codecs: str | None) -> bool:
    names = [c.strip().lower() for c in (codecs or "").split(",") if c.strip()]
    return bool(names) and all(name.startswith(_AUDIO_ONLY_CODECS) for name in names)


def _resolve(base: httpx.URL, uri: str | None) -> httpx.URL:
    """``uri`` against the playlist's URL (RFC 3986), checked like any URL the worker fetches."""
    if not uri:
        raise DecodeError(f"the HLS playlist {safe_url(base)} names an empty URI")
    return checked_url(str(base.join(uri.strip())))


def _ended(playlist: m3u8.M3U8) -> bool:
    return bool(playlist.is_endlist) or (playlist.playlist_type or "").lower() == "vod"


def _target(playlist: m3u8.M3U8) -> float:
    """The playlist's target duration, as the reader paces itself by it."""
    declared = playlist.target_duration
    if not declared:
        declared = max((s.duration or 0.0 for s in playlist.segments), default=0.0)
    return min(max(float(declared or MIN_POLL_SECONDS), MIN_POLL_SECONDS), MAX_POLL_SECONDS)


def _media_sequence(playlist: m3u8.M3U8, base: httpx.URL) -> int:
    sequence = playlist.media_sequence or 0
    if sequence < 0:
        raise DecodeError(f"the HLS playlist {safe_url(base)} has a negative media sequence")
    return int(sequence)


def _duration(segment: m3u8.Segment, base: httpx.URL) -> float:
    duration = segment.duration
    if duration is None or not math.isfinite(duration) or duration < 0 or duration > 3600:
        raise DecodeError(f"the HLS playlist {safe_url(base)} gives a segment the duration {duration!r}")
    return float(duration)


def _live_edge(durations: list[float], target: float) -> int:
    """Index of the segment a live playlist is joined at: the last that starts at least
    LIVE_EDGE_TARGET_DURATIONS target durations from the end (the first when it is shorter than that)."""
    remaining = 0.0
    for i in range(len(durations) - 1, -1, -1):
        remaining += durations[i]
        if remaining >= LIVE_EDGE_TARGET_DURATIONS * target:
            return i
    return 0


def _check_supported(segment: m3u8.Segment, base: httpx.URL) -> None:
    """Encrypted, fMP4 and byte-range segments are refused, typed, before any byte of them is fetched."""
    where = safe_url(base)
    key = segment.key
    if key is not None and (key.method or "NONE").upper() != "NONE":
        raise UnsupportedInputError(
            f"the HLS stream {where} is encrypted (#EXT-X-KEY METHOD={key.method}); only clear streams are read"
        )
    if segment.init_section is not None:
        raise UnsupportedInputError(
            f"the HLS stream {where} has fMP4 segments (#EXT-X-MAP); only MPEG-TS segments are read"
        )
    if segment.byterange:
        raise UnsupportedInputError(
            f"the HLS stream {where} addresses segments by byte range (#EXT-X-BYTERANGE); this is not read"
        )
