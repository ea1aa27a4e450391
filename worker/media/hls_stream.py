"""A job's video as a file that may still be growing: an HLS stream (worker/media/hls.py) is appended,
segment by segment, to one MPEG-TS file in the job's workspace while the job works on what has arrived;
any other source is fetched whole (worker/media/sources.py). Only the job appends (``VideoFeed.grow``),
between its reads, so nothing reads the file while it is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from worker.api.errors import FetchError
from worker.api.schema import MediaSource
from worker.config import Settings
from worker.media.hls import HlsRead, HlsReader, Segment, is_hls_url, is_playlist
from worker.media.sources import fetch, safe_url

log = logging.getLogger(__name__)

STREAM_FILE = "stream.ts"


def max_seconds_note(source: MediaSource) -> str:
    name = safe_url(source.value) if source.kind == "url" else source.describe()  # no query: it may hold keys
    return f"max_seconds applies to HLS streams; {name} is a video file, read whole"


async def fetch_video(
    source: MediaSource, workspace: Path, settings: Settings, *, max_seconds: float | None, want_pixels: int
) -> tuple[Path, list[str]]:
    """The job's video whole on disk, and what its reading noted: ``fetch_media``'s file, or an HLS stream
    read up to ``max_seconds`` into one MPEG-TS file (``open_video``)."""
    async with open_video(source, workspace, settings, max_seconds=max_seconds, want_pixels=want_pixels) as feed:
        while await feed.grow() or not feed.ended:
            pass
    return feed.path, feed.warnings


def _check_some(read: HlsRead) -> None:
    if read.segments == 0:
        raise FetchError(f"the HLS playlist {read.url} has no segment to read")


class VideoFeed:
    """A job's video file, whole. ``LiveStream`` is one that grows."""

    live = False

    def __init__(self, path: Path, warnings: list[str] | None = None) -> None:
        self.path = path
        self.ended = True  # nothing more will be appended
        self.warnings = warnings or []
        self._given = False

    @property
    def expected_seconds(self) -> float | None:
        """Seconds of video a growing feed will hold at most (None: not known, or whole)."""
        return None

    @property
    def limit_seconds(self) -> float | None:
        """Where the video is cut: a stream's ``max_seconds`` (None: nowhere)."""
        return None

    async def grow(self) -> list[Path]:
        """Wait for more of the video and append it to ``path``: the files of the parts appended, each a
        playable file of its own until the next call. A whole file is its one part, given once."""
        if self._given:
            return []
        self._given = True
        return [self.path]


class LiveStream(VideoFeed):
    """An HLS stream read by a thread (``HlsReader``) into segment files, which ``grow`` appends to
    ``path`` as the job asks for them."""

    live = True

    def __init__(
        self, url: str, workspace: Path, settings: Settings, *, max_seconds: float | None, want_pixels: int
    ) -> None:
        super().__init__(workspace / STREAM_FILE)
        self.ended = False
        self._arrived: asyncio.Queue[Segment | None] = asyncio.Queue()
        self._cancel = threading.Event()
        self._taken: list[Path] = []
        loop = asyncio.get_running_loop()
        self._done: asyncio.Future[HlsRead] = loop.create_future()
        self._reader = HlsReader(
            url,
            workspace,
            settings,
            max_seconds=settings.max_video_seconds if max_seconds is None else max_seconds,
            want_pixels=want_pixels,
            on_segment=lambda segment: loop.call_soon_threadsafe(self._arrived.put_nowait, segment),
            cancel=self._cancel,
        )
        # A thread of its own, not the loop's executor: a stream holds it for as long as it plays, and many
        # streams at once would take every executor thread the jobs' short blocking steps need.
        self._thread = threading.Thread(target=self._read, args=(loop,), name="hls-reader", daemon=True)
        self._thread.start()

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        """The reader's thread: its result or failure goes to ``_done``, after every segment it handed on."""
        try:
            read = self._reader.run()
        except BaseException as exc:  # whatever it is, the job sees it (a FetchError, or a bug to report)
            loop.call_soon_threadsafe(self._finish, None, exc)
        else:
            loop.call_soon_threadsafe(self._finish, read, None)

    def _finish(self, read: HlsRead | None, error: BaseException | None) -> None:
        if error is not None:
            self._done.set_exception(error)
        else:
            assert read is not None
            self._done.set_result(read)
        self._arrived.put_nowait(None)

    @property
    def expected_seconds(self) -> float | None:
        read = self._reader.read
        return read.expected_seconds if read is not None else None

    @property
    def limit_seconds(self) -> float | None:
        return self._reader.max_seconds

    async def grow(self) -> list[Path]:
        for path in self._taken:
            path.unlink(missing_ok=True)
        self._taken = []
        if self.ended:
            return []
        batch = [await self._arrived.get()]
        while not self._arrived.empty():
            batch.append(self._arrived.get_nowait())
        segments = [s for s in batch if s is not None]
        if segments:
            await asyncio.to_thread(self._append, segments)
        if len(segments) < len(batch):
            self.ended = True
            read = self._done.result()  # the reader's failure before its first segment is the job's
            _check_some(read)
            self.warnings += read.warnings
        self._taken = [s.path for s in segments]
        return list(self._taken)

    def _append(self, segments: list[Segment]) -> None:
        with self.path.open("ab") as out:
            for segment in segments:
                with segment.path.open("rb") as part:
                    shutil.copyfileobj(part, out)

    async def close(self) -> None:
        """Stop the reader and wait for its thread (it ends within a fraction of a second), so that
        nothing writes into the workspace once the job leaves it."""
        self._cancel.set()
        with contextlib.suppress(Exception):  # a failure of the reader was grow's to raise, not the exit's
            await asyncio.shield(self._done)


@contextlib.asynccontextmanager
async def open_video(
    source: MediaSource, workspace: Path, settings: Settings, *, max_seconds: float | None, want_pixels: int
) -> AsyncIterator[VideoFeed]:
    """The job's video as a feed: an HLS stream (a ``.m3u8`` URL, or a URL whose body is a playlist) read
    as it plays, up to ``max_seconds``; any other source fetched whole first."""
    feed: VideoFeed
    if source.kind == "url" and is_hls_url(source.value):
        feed = LiveStream(source.value, workspace, settings, max_seconds=max_seconds, want_pixels=want_pixels)
    else:
        media = await fetch(source, workspace, settings)
        if source.kind == "url" and await asyncio.to_thread(is_playlist, media.path):
            await asyncio.to_thread(media.path.unlink)
            feed = LiveStream(source.value, workspace, settings, max_seconds=max_seconds, want_pixels=want_pixels)
        else:
            feed = VideoFeed(media.path, [max_seconds_note(source)] if max_seconds is not None else [])
    try:
        yield feed
    finally:
        if isinstance(feed, LiveStream):
            await feed.close()
