"""Getting the job's media onto local disk: base64 payloads, allowed paths, http(s) downloads.

Every job gets a private scratch directory (``job_workspace``) that is removed when the job ends, on
success or failure. Paths given by callers are opened only when they resolve, symlinks included, under
one of ALLOWED_MEDIA_ROOTS; the file is opened once, the opened file is checked, and the job reads that
open file to the end, so a path changed after the check cannot make it read another.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import ipaddress
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from worker.config import Settings
from worker.api.errors import FetchError
from worker.api.schema import MediaSource

log = logging.getLogger(__name__)

_MAX_REDIRECTS = 5
# NAT64's well-known prefix embeds an IPv4 address in its last 32 bits (RFC 6052).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_STALL_SECONDS = 30.0
_CANCEL_POLL_SECONDS = 0.1
# httpx logs every request's full URL at INFO, query string included; presigned URLs carry credentials
# there. Our own messages name downloads by safe_url.
logging.getLogger("httpx").setLevel(logging.WARNING)


@dataclass(frozen=True)
class LocalMedia:
    path: Path
    size_bytes: int
    source: str  # "url", "path" or "base64"


# Caller files opened for a job (path sources), by workspace: they stay open until the job's workspace
# is removed, and the job reads them through /proc/<worker pid>/fd (not /proc/self: decoder processes read
# them too, and /proc/self there is their own fd table).
_open_files: dict[Path, list[int]] = {}
_open_files_lock = threading.Lock()


@contextlib.contextmanager
def job_workspace(settings: Settings) -> Iterator[Path]:
    """A fresh private directory for one job's files, always removed afterwards (and the caller files
    opened for the job closed)."""
    settings.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = Path(tempfile.mkdtemp(prefix="job-", dir=settings.work_dir))
    try:
        yield path
    finally:
        with _open_files_lock:
            fds = _open_files.pop(path, [])
        for fd in fds:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)


async def fetch(source: MediaSource, workspace: Path, settings: Settings) -> LocalMedia:
    """``fetch_media`` in a worker thread. A cancelled job (RunPod's cancel or timeout) ends its download
    at once and waits for the thread, so no download runs on to DOWNLOAD_TIMEOUT after the job has gone and
    nothing is written into the workspace once the job leaves it."""
    cancel = threading.Event()
    task = asyncio.ensure_future(asyncio.to_thread(fetch_media, source, workspace, settings, cancel=cancel))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        cancel.set()
        await asyncio.wait({task})  # within _CANCEL_POLL_SECONDS for a download; its FetchError is moot
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved
        raise


def fetch_media(
    source: MediaSource, workspace: Path, settings: Settings, *, cancel: threading.Event | None = None
) -> LocalMedia:
    """Blocking: run it in a worker thread (or use ``fetch``). Setting ``cancel`` ends a download."""
    if source.kind == "base64":
        return _from_base64(source.value, workspace, settings)
    if source.kind == "path":
        return _from_path(source.value, workspace, settings)
    return _download(source.value, workspace, settings, cancel)


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


def _from_path(raw: str, workspace: Path, settings: Settings) -> LocalMedia:
    """The file at ``raw``, checked and opened once. The name is resolved and checked first (for clear
    errors), then opened without following a symlink in its last component, and what was opened is
    checked again: its real path (the kernel's, from /proc/self/fd) the one checked, a regular file. A
    directory or file swapped for a symlink between the check and the open is refused; one swapped after
    the open changes nothing, since the job reads the open file (``/proc/<pid>/fd/N``, which opens that
    very file again whatever its name now points to, from the worker or its decoder processes) until its
    workspace is removed."""
    try:
        resolved = Path(raw).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        # ValueError: an embedded NUL byte. Same message whether it is missing or outside the roots would
        # leak nothing either way, but a caller debugging a typo deserves to know the file is not there.
        raise FetchError(f"file not found: {raw!r}") from None
    _check_allowed(resolved, raw, settings)
    try:
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever.
        fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the file became a symlink since the check
            raise FetchError(f"path {raw!r} changed while it was being opened; not read") from None
        raise FetchError(f"file {raw!r} cannot be read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        # The kernel's name of what was opened: a directory on the way swapped for a symlink since the
        # check (O_NOFOLLOW guards only the last component) shows here.
        if Path(os.readlink(f"/proc/self/fd/{fd}")) != resolved:
            raise FetchError(f"path {raw!r} changed while it was being opened; not read")
        if not stat.S_ISREG(info.st_mode):
            raise FetchError(f"not a regular file: {raw!r}")
    except BaseException:
        os.close(fd)
        raise
    with _open_files_lock:
        _open_files.setdefault(workspace, []).append(fd)
    return LocalMedia(path=Path(f"/proc/{os.getpid()}/fd/{fd}"), size_bytes=info.st_size, source="path")


def _check_allowed(resolved: Path, raw: str, settings: Settings) -> None:
    roots = [root.resolve() for root in settings.allowed_media_roots]
    if not any(resolved.is_relative_to(root) for root in roots):
        raise FetchError(
            f"path {raw!r} is outside the allowed media roots ({', '.join(map(str, settings.allowed_media_roots))}); "
            "set ALLOWED_MEDIA_ROOTS to allow more"
        )
    # WORK_DIR sits under $TMPDIR, a default root: other jobs' files there are never a job's input.
    if resolved.is_relative_to(settings.work_dir.resolve()):
        raise FetchError(f"path {raw!r} is inside the worker's private WORK_DIR")


def _download(raw_url: str, workspace: Path, settings: Settings, cancel: threading.Event | None) -> LocalMedia:
    size = download(raw_url, workspace / "download.bin", settings, cancel=cancel).size
    return LocalMedia(path=workspace / "download.bin", size_bytes=size, source="url")


@dataclass(frozen=True)
class Download:
    size: int  # bytes written
    url: httpx.URL  # where the body came from, after any redirects (the base of URLs it names)


def download(
    raw_url: str,
    path: Path,
    settings: Settings,
    *,
    max_bytes: int | None = None,
    timeout: float | None = None,
    limit_name: str | None = None,
    cancel: threading.Event | None = None,
) -> Download:
    """Streams the URL to ``path``. Every redirect target is checked like the URL itself (public addresses
    only unless ALLOW_PRIVATE_URLS, the address pinned against DNS rebinding), the size is capped by
    Content-Length and while streaming (``max_bytes``, default MAX_DOWNLOAD_BYTES; ``limit_name`` names
    the limit in errors), and the whole download, redirects included, has one deadline (``timeout``,
    default DOWNLOAD_TIMEOUT), so a server dripping a byte at a time, headers or body, cannot hold the job.
    Setting ``cancel`` ends a download under way (FetchError). Blocking: run it in a worker thread."""
    url = checked_url(raw_url)
    limit = settings.max_download_bytes if max_bytes is None else max_bytes
    limit_name = limit_name or f"MAX_DOWNLOAD_BYTES={limit}"
    deadline = settings.download_timeout if timeout is None else timeout
    deadline_name = f"DOWNLOAD_TIMEOUT={deadline:g}s" if timeout is None else f"{deadline:g}s"
    # Per-operation limit: a silent server is noticed within this even when the deadline is far.
    stall = min(_STALL_SECONDS, deadline)
    # Raw bytes, never decompressed: a video gains nothing from transfer compression and a gzip bomb
    # would expand in memory before any size check.
    headers = {"User-Agent": "video-caption-worker", "Accept-Encoding": "identity"}
    size = 0
    redirected_from: httpx.URL | None = None
    client = httpx.Client(follow_redirects=False, timeout=httpx.Timeout(stall))
    # httpx has no overall timeout; closing the client from a watchdog ends whatever read is under way.
    expired, finished = threading.Event(), threading.Event()
    watchdog = threading.Thread(target=_watch, args=(client, deadline, expired, finished, cancel), daemon=True)
    watchdog.start()
    try:
        for _ in range(_MAX_REDIRECTS + 1):
            target, extensions = (url, {}) if settings.allow_private_urls else _pinned(url, redirected_from)
            request_headers = headers | {"Host": url.netloc.decode("ascii")}  # host[:port], no credentials
            with client.stream("GET", target, headers=request_headers, extensions=extensions) as response:
                if response.is_redirect:
                    # Joined with the URL as given, not the pinned one: a relative Location keeps the host name.
                    redirected_from = url
                    url = checked_url(str(url.join(response.headers.get("location", ""))), redirected_from=url)
                    continue
                if response.status_code >= 400:
                    raise FetchError(f"download failed: HTTP {response.status_code} from {safe_url(url)}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise FetchError(f"download is {declared} bytes, above {limit_name}")
                with path.open("wb") as out:
                    for chunk in response.iter_raw():
                        size += len(chunk)
                        if size > limit:
                            raise FetchError(f"download exceeds {limit_name}")
                        out.write(chunk)
                break
        else:
            raise FetchError(f"more than {_MAX_REDIRECTS} redirects from {safe_url(raw_url)}")
    except Exception as exc:
        if cancel is not None and cancel.is_set():
            raise FetchError(f"download cancelled: {safe_url(url)}") from exc
        if expired.is_set():  # whatever the interrupted read raised
            raise FetchError(f"download timed out: not done within {deadline_name}: {safe_url(url)}") from exc
        if isinstance(exc, httpx.TimeoutException):
            raise FetchError(f"download timed out: no data for {stall:g}s from {safe_url(url)}") from exc
        if isinstance(exc, httpx.HTTPError):
            # httpx's own texts can quote the URL; the class name and our cleaned URL say enough.
            raise FetchError(f"download failed: {type(exc).__name__} from {safe_url(url)}") from exc
        raise
    finally:
        finished.set()
        client.close()
    if size == 0:
        raise FetchError(f"download is empty: {safe_url(url)}")
    return Download(size=size, url=url)


def _watch(
    client: httpx.Client,
    deadline: float,
    expired: threading.Event,
    finished: threading.Event,
    cancel: threading.Event | None,
) -> None:
    """Close ``client`` once ``deadline`` seconds have passed or ``cancel`` is set, unless ``finished``
    is set first."""
    if cancel is None:
        if finished.wait(deadline):
            return
        expired.set()
    else:
        ends = time.monotonic() + deadline
        # Two events cannot be waited for at once: a short poll notices the cancel soon enough.
        while not finished.wait(min(_CANCEL_POLL_SECONDS, max(0.0, ends - time.monotonic()))):
            if cancel.is_set():
                break
            if time.monotonic() >= ends:
                expired.set()
                break
        else:
            return
    client.close()


def checked_url(raw: str, *, redirected_from: httpx.URL | None = None) -> httpx.URL:
    """The URL if it is an absolute http(s) URL with a host (else FetchError); the same rule holds for every
    redirect and for every URL an HLS playlist names."""
    where = f" (redirect from {safe_url(redirected_from)})" if redirected_from is not None else ""
    try:
        url = httpx.URL(raw)
        host = url.host  # decoding an IDNA host name can fail even when parsing did not
    except (httpx.InvalidURL, ValueError) as exc:  # ValueError: IDNA errors in the host name
        raise FetchError(f"not a valid URL{where}: {type(exc).__name__}") from None
    if url.scheme not in ("http", "https") or not host:
        raise FetchError(f"only http(s) URLs with a host are fetched, not {safe_url(url)}{where}")
    return url


def _pinned(url: httpx.URL, redirected_from: httpx.URL | None) -> tuple[httpx.URL, dict[str, str]]:
    """``url`` with its host resolved once and replaced by that IP, if every address of the name is public,
    and the request extensions that keep TLS on the name: httpcore's ``sni_hostname`` sets SNI and the
    name the certificate must match (the Host header carries it for HTTP). Nothing resolves the name again,
    so a DNS answer that changes between the check and the connection (DNS rebinding) cannot redirect the
    download. httpx has no resolver hook; pinning through its public request API covers every hop."""
    host = url.host
    where = f" (redirect from {safe_url(redirected_from)})" if redirected_from is not None else ""
    try:
        infos = socket.getaddrinfo(host, url.port or (443 if url.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise FetchError(f"download failed: cannot resolve the host of {safe_url(url)}{where}") from None
    # Every address of the name, not only the one used: a name answering with both is no public host.
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    for address in addresses:
        kind = non_public(address)
        if kind is not None:
            raise FetchError(
                f"refused: {safe_url(url)}{where} resolves to a {kind} address; this worker fetches from public "
                "addresses only (ALLOW_PRIVATE_URLS=true allows private networks)"
            )
    try:
        ipaddress.ip_address(host)
        extensions = {}
    except ValueError:
        extensions = {"sni_hostname": host}
    return url.copy_with(host=str(addresses[0])), extensions


def non_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``address`` is not a public unicast address (loopback, private, link-local, ...), or None.
    IPv6 forms that carry an IPv4 address (mapped, 6to4, NAT64) are judged by that address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return non_public(embedded)
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if not address.is_global:
        return "private"
    return None


def safe_url(url: str | httpx.URL) -> str:
    """Scheme, host, port and path only: presigned URLs carry credentials in the query string and
    user:password@ URLs in the authority; errors and logs never show those."""
    try:
        parsed = httpx.URL(url) if isinstance(url, str) else url
        port = f":{parsed.port}" if parsed.port else ""
        return f"{parsed.scheme}://{parsed.host}{port}{parsed.path}"[:300]
    except (httpx.InvalidURL, ValueError):
        return "<invalid URL>"
