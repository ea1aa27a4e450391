"""Getting the job's media onto local disk: base64 payloads, allowed paths, http(s) downloads.

Every job gets a private scratch directory (``job_workspace``) that is removed when the job ends, on
success or failure. Paths given by callers are opened only when they resolve, symlinks included, under
one of ALLOWED_MEDIA_ROOTS.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from worker.config import Settings
from worker.errors import FetchError
from worker.schema import MediaSource

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class LocalMedia:
    path: Path
    size_bytes: int
    source: str  # "url", "path" or "base64"


@contextlib.contextmanager
def job_workspace(settings: Settings) -> Iterator[Path]:
    """A fresh private directory for one job's files, always removed afterwards."""
    settings.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = Path(tempfile.mkdtemp(prefix="job-", dir=settings.work_dir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def fetch_media(source: MediaSource, workspace: Path, settings: Settings) -> LocalMedia:
    """Blocking: run it in a worker thread."""
    if source.kind == "base64":
        return _from_base64(source.value, workspace, settings)
    if source.kind == "path":
        return _from_path(source.value, settings)
    return _download(source.value, workspace, settings)


def _from_base64(payload: str, workspace: Path, settings: Settings) -> LocalMedia:
    # Checked before decoding so an oversized payload costs no memory beyond the string itself.
    approx = len(payload) * 3 // 4
    if approx > settings.max_base64_bytes:
        raise FetchError(
            f"base64 media is about {approx} bytes, above MAX_BASE64_BYTES={settings.max_base64_bytes}; "
            "send a URL for large videos"
        )
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FetchError(f"video is not valid base64 ({exc}); a path must be absolute, a URL http(s)") from exc
    if not data:
        raise FetchError("base64 media decodes to zero bytes")
    path = workspace / "input.bin"
    path.write_bytes(data)
    return LocalMedia(path=path, size_bytes=len(data), source="base64")


def _from_path(raw: str, settings: Settings) -> LocalMedia:
    try:
        resolved = Path(raw).resolve(strict=True)
    except (OSError, RuntimeError):
        # Same message whether it is missing or outside the roots would leak nothing either way, but a
        # caller debugging a typo deserves to know the file is not there.
        raise FetchError(f"file not found: {raw}") from None
    roots = [root.resolve() for root in settings.allowed_media_roots]
    if not any(resolved.is_relative_to(root) for root in roots):
        raise FetchError(
            f"path {raw} is outside the allowed media roots ({', '.join(map(str, settings.allowed_media_roots))}); "
            "set ALLOWED_MEDIA_ROOTS to allow more"
        )
    if not resolved.is_file():
        raise FetchError(f"not a regular file: {raw}")
    return LocalMedia(path=resolved, size_bytes=resolved.stat().st_size, source="path")


def _download(url: str, workspace: Path, settings: Settings) -> LocalMedia:
    path = workspace / "download.bin"
    limit = settings.max_download_bytes
    timeout = httpx.Timeout(settings.download_timeout, connect=min(30.0, settings.download_timeout))
    try:
        with httpx.Client(follow_redirects=True, max_redirects=5, timeout=timeout) as client:
            with client.stream("GET", url, headers={"User-Agent": "video-caption-worker"}) as response:
                if response.status_code >= 400:
                    raise FetchError(f"download failed: HTTP {response.status_code} from {_safe_url(url)}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise FetchError(f"download is {declared} bytes, above MAX_DOWNLOAD_BYTES={limit}")
                size = 0
                with path.open("wb") as out:
                    for chunk in response.iter_bytes(_CHUNK):
                        size += len(chunk)
                        if size > limit:
                            raise FetchError(f"download exceeds MAX_DOWNLOAD_BYTES={limit}")
                        out.write(chunk)
    except httpx.TimeoutException as exc:
        raise FetchError(f"download timed out after {settings.download_timeout:g}s: {_safe_url(url)}") from exc
    except httpx.HTTPError as exc:
        raise FetchError(f"download failed: {type(exc).__name__}: {exc}") from exc
    if size == 0:
        raise FetchError(f"download is empty: {_safe_url(url)}")
    return LocalMedia(path=path, size_bytes=size, source="url")


def _safe_url(url: str) -> str:
    # Presigned URLs carry credentials in the query string; errors and logs show the rest only.
    return httpx.URL(url).copy_with(query=None, fragment=None).__str__()
