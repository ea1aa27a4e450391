"""Where media may come from: allowed paths only, http(s) URLs with every redirect re-checked, capped and
time-limited downloads, private scratch files, and no process ever started by the worker code."""

from __future__ import annotations

import ast
import asyncio
import ipaddress
import os
import re
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import worker.media.sources
from tests.fakes import FakeEngine, FakeEngineSlot, load_tokenizer
from tests.http_server import GZIP_BOMB_BYTES, HostileServer, gzip_bomb, running
from worker.config import Settings
from worker.media.pool import DecodePool
from worker.api.errors import FetchError
from worker.media.sources import fetch_media, job_workspace, non_public
from worker.job.service import CaptionService
from worker.api.schema import MediaSource

ROOT = Path(__file__).resolve().parent.parent
HANG_GUARD_S = 15.0
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def settings(media_dir: Path, work_dir: Path) -> Settings:
    # The hostile server is on 127.0.0.1; the default, refusing it, has its own tests below.
    return Settings(
        allowed_media_roots=[media_dir],
        work_dir=work_dir,
        download_timeout=2.0,
        max_download_bytes=1024**2,
        allow_private_urls=True,
    )


def fetch(source: MediaSource, settings: Settings) -> tuple[int, bytes]:
    with job_workspace(settings) as workspace:
        media = fetch_media(source, workspace, settings)
        return media.size_bytes, media.path.read_bytes()[:16]


def fetch_error(source: MediaSource, settings: Settings) -> str:
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch(source, settings)
    assert time.monotonic() - started < HANG_GUARD_S
    return info.value.message


# --- URLs ---------------------------------------------------------------------------------------------


def test_redirects_are_followed_within_the_limit(
    settings: Settings, hostile_server: str, clip_for_sources: Path
) -> None:
    for path in ("/redirect", "/redirect-chain"):
        size, _ = fetch(MediaSource("url", hostile_server + path), settings)
        assert size == clip_for_sources.stat().st_size


@pytest.mark.parametrize(
    "path,match",
    [
        ("/redirect-file", r"only http\(s\) URLs with a host are fetched, not file:///etc/passwd \(redirect from "),
        ("/redirect-ftp", r"only http\(s\) URLs with a host are fetched, not ftp://127\.0\.0\.1/clip\.mp4 \(redirect"),
        ("/redirect-loop", r"more than 5 redirects"),
    ],
)
def test_every_redirect_is_checked_like_the_url(settings: Settings, hostile_server: str, path: str, match: str) -> None:
    assert re.search(match, fetch_error(MediaSource("url", hostile_server + path), settings))


@pytest.mark.parametrize(
    "url",
    ["http:///x.mp4", "http://[::1/x.mp4", "https://xn--/x.mp4", "http://\udcff/x.mp4", "ftp://127.0.0.1/x.mp4"],
)
def test_malformed_urls_are_fetch_errors(settings: Settings, url: str) -> None:
    assert fetch_error(MediaSource("url", url), settings)


@pytest.mark.parametrize(
    "path,match",
    [
        ("/huge-declared", "download is 1000000000000 bytes, above MAX_DOWNLOAD_BYTES=1048576"),
        ("/huge-streamed", "download exceeds MAX_DOWNLOAD_BYTES=1048576"),
        # A silent server trips the per-read timeout and the deadline at the same time here (both 2 s).
        ("/stall-headers", "download timed out"),
        ("/stall-body", "download timed out"),
        ("/drip", "download timed out: not done within DOWNLOAD_TIMEOUT=2s"),
        ("/drip-headers", "download timed out: not done within DOWNLOAD_TIMEOUT=2s"),
        ("/drop", "download failed: RemoteProtocolError"),
        ("/empty", "download is empty"),
    ],
)
def test_downloads_are_capped_and_time_limited(settings: Settings, hostile_server: str, path: str, match: str) -> None:
    assert match in fetch_error(MediaSource("url", hostile_server + path), settings)


def test_a_cancelled_job_ends_its_download_at_once(settings: Settings, hostile_server: str) -> None:
    """RunPod's cancel (or a job timeout) cancels the job's task. The download under way ends with it and
    its thread is done when the cancel returns, instead of running on to DOWNLOAD_TIMEOUT (600 s here)
    while the job's workspace is removed under it."""
    patient = settings.model_copy(update={"download_timeout": 600.0})

    async def cancelled_mid_download() -> asyncio.Task[Any]:
        with job_workspace(patient) as workspace:
            job = worker.media.sources.fetch(MediaSource("url", f"{hostile_server}/drip"), workspace, patient)
            task = asyncio.create_task(job)
            deadline = time.monotonic() + HANG_GUARD_S
            while not (workspace / "download.bin").exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # the body has started: a download is under way
            assert (workspace / "download.bin").exists() and not task.done()
            task.cancel()
            # The drip ends on its own after 20 s: a download that ignored the cancel would outlast this.
            done, _ = await asyncio.wait({task}, timeout=HANG_GUARD_S)
            assert task in done
            return task

    assert asyncio.run(cancelled_mid_download()).cancelled()


def test_a_gzip_bomb_is_stored_as_sent_never_inflated(settings: Settings, hostile_server: str) -> None:
    status = Path("/proc/self/status")

    def mib(field: str) -> float:
        match = re.search(rf"^{field}:\s+(\d+) kB", status.read_text(), re.MULTILINE)
        assert match
        return int(match.group(1)) / 1024

    gzip_bomb()  # built by the server in this process: before the measurement
    before = mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    size, head = fetch(MediaSource("url", f"{hostile_server}/gzip-bomb"), settings)
    assert head.startswith(b"\x1f\x8b") and size < GZIP_BOMB_BYTES // 100  # the compressed bytes, as sent
    assert mib("VmHWM") - before < 32


def test_url_credentials_never_reach_errors(settings: Settings, hostile_server: str) -> None:
    port = hostile_server.rsplit(":", 1)[1]
    for url in (
        f"http://alice:pa55word-secret@127.0.0.1:{port}/missing?X-Amz-Signature=sig-secret#frag-secret",
        "http://alice:pa55word-secret@127.0.0.1:9/x.mp4?token=sig-secret",
        f"{hostile_server}/redirect-file?token=sig-secret",
    ):
        message = fetch_error(MediaSource("url", url), settings)
        assert "secret" not in message and "alice" not in message, message


# --- private networks (SSRF) --------------------------------------------------------------------------

# 127.0.0.2 stands in for a public host in the tests below: every address this machine can serve from is
# non-public, so the fake classification names this one loopback address public, and only this one.
FAKE_PUBLIC_HOST = "127.0.0.2"


def fake_non_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    return None if str(address) == FAKE_PUBLIC_HOST else non_public(address)


@pytest.fixture
def default_settings(media_dir: Path, work_dir: Path) -> Settings:
    """ALLOW_PRIVATE_URLS left at its default."""
    return Settings(allowed_media_roots=[media_dir], work_dir=work_dir, download_timeout=2.0)


@pytest.fixture
def fake_public_server(clip_for_sources: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HostileServer]:
    """The hostile server on FAKE_PUBLIC_HOST, which the worker takes for a public address."""
    monkeypatch.setattr(worker.media.sources, "non_public", fake_non_public)
    with running(clip_for_sources.read_bytes(), FAKE_PUBLIC_HOST) as server:
        yield server


def test_the_default_is_to_refuse_private_addresses(default_settings: Settings) -> None:
    assert default_settings.allow_private_urls is False


@pytest.mark.parametrize(
    "url,kind",
    [
        ("http://127.0.0.1:{port}/clip.mp4", "loopback"),
        ("http://localhost:{port}/clip.mp4", "loopback"),
        ("http://2130706433:{port}/clip.mp4", "loopback"),  # 127.0.0.1 as one decimal number
        ("http://127.1:{port}/clip.mp4", "loopback"),
        ("http://[::1]:{port}/clip.mp4", "loopback"),
        ("http://[::ffff:127.0.0.1]:{port}/clip.mp4", "loopback"),
        ("http://0.0.0.0:{port}/clip.mp4", "unspecified"),
        ("http://10.1.2.3/video.mp4", "private"),
        ("http://172.16.0.1/video.mp4", "private"),
        ("http://172.31.255.254/video.mp4", "private"),
        ("http://192.168.1.1/video.mp4", "private"),
        ("http://100.64.0.1/video.mp4", "private"),  # carrier-grade NAT
        ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "link-local"),
        ("https://[fd00:ec2::254]/latest/meta-data/", "private"),  # AWS's IPv6 metadata address
        ("http://[fc00::1]/video.mp4", "private"),
        ("http://[fe80::1]/video.mp4", "link-local"),
        ("http://[64:ff9b::a9fe:a9fe]/", "link-local"),  # NAT64 form of 169.254.169.254
    ],
)
def test_urls_of_non_public_addresses_are_refused_by_default(
    default_settings: Settings, hostile_server: str, url: str, kind: str
) -> None:
    port = hostile_server.rsplit(":", 1)[1]
    message = fetch_error(MediaSource("url", url.format(port=port)), default_settings)
    assert f"resolves to a {kind} address" in message and "ALLOW_PRIVATE_URLS" in message, message


def test_a_refused_url_is_never_connected_to(default_settings: Settings, clip_for_sources: Path) -> None:
    with running(clip_for_sources.read_bytes()) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/clip.mp4"
        assert "refused" in fetch_error(MediaSource("url", url), default_settings)
        assert server.requests == []


@pytest.mark.parametrize(
    "target,kind",
    [
        ("http://127.0.0.1:{port}/clip.mp4", "loopback"),
        ("http://localhost:{port}/clip.mp4", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::1]:{port}/clip.mp4", "loopback"),
    ],
)
def test_a_redirect_to_a_non_public_address_is_refused(
    default_settings: Settings, fake_public_server: HostileServer, hostile_server: str, target: str, kind: str
) -> None:
    public = f"http://{FAKE_PUBLIC_HOST}:{fake_public_server.server_address[1]}"
    # The good clip is there at the loopback target: only the address check stands in the way.
    location = target.format(port=hostile_server.rsplit(":", 1)[1])
    message = fetch_error(MediaSource("url", f"{public}/redirect-to?{location}"), default_settings)
    assert f"resolves to a {kind} address" in message, message
    assert f"(redirect from {public}/redirect-to)" in message, message
    assert [path for path, _ in fake_public_server.requests] == [f"/redirect-to?{location}"]


def test_public_urls_are_fetched_from_the_address_checked(
    default_settings: Settings,
    fake_public_server: HostileServer,
    clip_for_sources: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: the name answers a public address when checked and a loopback one afterwards.
    The download must go to the address checked, resolving the name once per hop."""
    port = fake_public_server.server_address[1]
    real_getaddrinfo = socket.getaddrinfo
    lookups: list[str] = []

    def fake_rebinding_getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "media.example":
            lookups.append(host)
            host = FAKE_PUBLIC_HOST if len(lookups) == 1 else "127.0.0.1"
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_rebinding_getaddrinfo)
    # Where the rebound name points: same port, other content.
    with running(b"internal secret", "127.0.0.1", port) as internal:
        size, _ = fetch(MediaSource("url", f"http://media.example:{port}/clip.mp4"), default_settings)
        assert size == clip_for_sources.stat().st_size
        assert lookups == ["media.example"]
        assert fake_public_server.requests == [("/clip.mp4", f"media.example:{port}")]
        # A relative redirect stays on the name, resolved and checked again for the new hop: refused once the
        # name has rebound.
        lookups.clear()
        message = fetch_error(MediaSource("url", f"http://media.example:{port}/redirect"), default_settings)
        assert f"clip.mp4 (redirect from http://media.example:{port}/redirect) resolves to a loopback" in message
        assert internal.requests == []


def test_a_job_with_a_loopback_url_is_a_fetch_error(
    tiny_model: Path, default_settings: Settings, hostile_server: str
) -> None:
    service = CaptionService(default_settings, FakeEngineSlot(FakeEngine(load_tokenizer(tiny_model))))
    output = asyncio.run(service.handle({"video": f"{hostile_server}/clip.mp4"}))
    assert output["error"]["type"] == "fetch_error" and "loopback" in output["error"]["message"], output


# --- paths --------------------------------------------------------------------------------------------


def test_paths_that_escape_or_are_not_plain_files_are_refused(
    settings: Settings, media_dir: Path, work_dir: Path, clip_for_sources: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(clip_for_sources.read_bytes())
    escape_dir = media_dir / "escape_dir"
    if not escape_dir.is_symlink():
        escape_dir.symlink_to(outside, target_is_directory=True)
    fifo = media_dir / "pipe.mp4"
    if not fifo.exists():
        os.mkfifo(fifo)  # opening it would block forever
    cases = {
        "symlinked directory": (str(escape_dir / "secret.mp4"), "outside the allowed media roots"),
        "dot-dot": (f"{media_dir}/../{media_dir.name}/../{outside.parent.name}/outside/secret.mp4", "outside"),
        "NUL byte": (f"{clip_for_sources}\x00.txt", "file not found"),
        "FIFO": (str(fifo), "not a regular file"),
        "device": ("/dev/zero", "outside the allowed media roots"),
        "WORK_DIR": (str(work_dir), "inside the worker's private WORK_DIR"),
    }
    for name, (path, match) in cases.items():
        settings_with_work_root = settings.model_copy(update={"allowed_media_roots": [media_dir, work_dir]})
        assert match in fetch_error(MediaSource("path", path), settings_with_work_root), name


def test_dot_dot_that_stays_inside_the_root_is_fine(
    settings: Settings, media_dir: Path, clip_for_sources: Path
) -> None:
    (media_dir / "subdir").mkdir(exist_ok=True)
    path = f"{media_dir}/subdir/../{clip_for_sources.name}"
    assert fetch(MediaSource("path", path), settings)[0] == clip_for_sources.stat().st_size


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_a_fetch_error(settings: Settings, media_dir: Path) -> None:
    path = media_dir / "unreadable.mp4"
    path.write_bytes(b"x")
    path.chmod(0)
    try:
        assert "cannot be read" in fetch_error(MediaSource("path", str(path)), settings)
    finally:
        path.unlink()


def _swap_in_symlink(path: Path, target: Path) -> None:
    """Replace ``path`` by a symlink to ``target`` in one rename, as an attacker racing the worker would."""
    link = path.with_name(path.name + ".swap")
    link.symlink_to(target, target_is_directory=target.is_dir())
    link.replace(path)


@pytest.fixture
def swap_case(media_dir: Path, tmp_path: Path, clip_for_sources: Path) -> tuple[Path, Path]:
    """A clip in a directory under the root, and a secret outside the roots by the same name."""
    inside = media_dir / f"swap-{tmp_path.name}"
    inside.mkdir()
    (inside / "clip.mp4").write_bytes(clip_for_sources.read_bytes())
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "clip.mp4").write_bytes(b"secret outside the media roots")
    return inside, outside


@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_symlink_swapped_in_between_check_and_open_is_refused(
    settings: Settings, swap_case: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """The race, made certain: a fake os.open swaps the path for a symlink out of the roots right after
    the checks and before the real open."""
    inside, outside = swap_case
    target = inside / "clip.mp4"
    real_open = os.open

    def fake_os_open_after_swap(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if Path(path) == target:
            if what == "file":
                _swap_in_symlink(target, outside / "clip.mp4")
            else:
                inside.rename(inside.with_name(inside.name + ".moved"))
                inside.symlink_to(outside, target_is_directory=True)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_os_open_after_swap)
    fds_before = len(os.listdir("/proc/self/fd"))
    message = fetch_error(MediaSource("path", str(target)), settings)
    assert "changed while it was being opened" in message, message
    assert len(os.listdir("/proc/self/fd")) == fds_before  # the refused file was closed


def test_a_path_swapped_after_the_open_changes_nothing(
    settings: Settings, swap_case: tuple[Path, Path], clip_for_sources: Path
) -> None:
    inside, outside = swap_case
    target = inside / "clip.mp4"
    fds_before = len(os.listdir("/proc/self/fd"))
    with job_workspace(settings) as workspace:
        media = fetch_media(MediaSource("path", str(target)), workspace, settings)
        _swap_in_symlink(target, outside / "clip.mp4")
        assert target.read_bytes().startswith(b"secret")
        # Every later read of the job (probe, index, decode: each opens media.path) gets the file checked.
        assert media.path.read_bytes() == clip_for_sources.read_bytes()
        assert media.size_bytes == clip_for_sources.stat().st_size
    assert len(os.listdir("/proc/self/fd")) == fds_before  # closed with the workspace


# --- scratch files ------------------------------------------------------------------------------------


def test_scratch_directories_are_private_unique_and_removed(settings: Settings) -> None:
    with job_workspace(settings) as first, job_workspace(settings) as second:
        assert first != second and first.parent == second.parent == settings.work_dir
        for path in (settings.work_dir, first, second):
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    with pytest.raises(RuntimeError), job_workspace(settings) as third:
        (third / "partial.bin").write_bytes(b"x")
        raise RuntimeError("job failed midway")
    assert not list(settings.work_dir.iterdir())


# --- no processes -------------------------------------------------------------------------------------

SHELL_OUTS = {"subprocess", "os.system", "os.popen", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "pty.spawn"}
_events: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _events is not None and event.startswith(tuple(SHELL_OUTS)):
        _events.append(event)


@pytest.fixture(scope="module")
def audit() -> Iterator[None]:
    sys.addaudithook(_audit)  # cannot be removed; it records only while a test sets _events
    yield


def test_no_worker_module_can_start_a_process() -> None:
    banned_modules = {"subprocess", "pty", "multiprocessing"}
    banned_calls = {"system", "popen", "execv", "execve", "execvp", "spawnv", "posix_spawn", "fork", "startfile"}
    # The exceptions: the decoder processes, started at cold start from a fork server with a fixed
    # command line, running the worker's own decode functions; and the bulk command's supervisor (a CLI,
    # never reached from a job), which starts its engine processes as `python -m worker.bulk` with its own
    # operator's arguments and lists GPUs with `nvidia-smi -L`. No command is ever built from a job.
    allowed = {
        ROOT / "worker" / "media" / "pool.py": {"multiprocessing"},
        ROOT / "worker" / "bulk" / "supervisor.py": {"subprocess"},
    }
    for path in sorted((ROOT / "worker").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                roots = {n.split(".")[0] for n in names} - allowed.get(path, set())
                assert not banned_modules & roots, (path, ast.dump(node))
                if "bulk" not in path.relative_to(ROOT).parts:  # the serving side never loads the bulk supervisor
                    assert not any(n == "worker.bulk" or n.startswith("worker.bulk.") for n in names), path
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
                assert node.attr not in banned_calls, (path, node.attr)


@pytest.mark.parametrize("decode_workers", [0, 2], ids=["threads", "decoder_processes"])
def test_jobs_start_no_process_fake_engine(
    audit: None,
    tiny_model: Path,
    media_dir: Path,
    work_dir: Path,
    hostile_server: str,
    clip_for_sources: Path,
    decode_workers: int,
) -> None:
    global _events
    settings = Settings(
        allowed_media_roots=[media_dir], work_dir=work_dir, download_timeout=2.0, allow_private_urls=True
    )
    decoders = DecodePool(decode_workers)
    decoders.start()  # at cold start, before any job: jobs themselves start nothing
    service = CaptionService(settings, FakeEngineSlot(FakeEngine(load_tokenizer(tiny_model))), decoders)
    jobs: list[dict[str, Any]] = [
        {"video": str(clip_for_sources), "process_audio": True},
        {"video": f"{hostile_server}/redirect"},
        {"video_base64": "AAAA" * 100},
        {"video": "$(touch /tmp/pwned)"},
        {"video": "/tmp/`touch pwned`.mp4"},
        {"video": f"{hostile_server}/clip.mp4; touch /tmp/pwned"},
        {"video": "|touch /tmp/pwned"},
        {"video": str(clip_for_sources), "prompt": "$(id) `id` ; id"},
    ]
    loop = asyncio.new_event_loop()
    _events = []
    try:
        outputs = [loop.run_until_complete(service.handle(job)) for job in jobs]
    finally:
        recorded, _events = _events, None
        loop.close()
        decoders.shutdown()
    assert recorded == [], recorded
    assert "caption" in outputs[0] and "caption" in outputs[1] and "caption" in outputs[-1]
    assert all("error" in out for out in outputs[2:-1])
    assert not Path("/tmp/pwned").exists()


# --- import graph -------------------------------------------------------------------------------------


def _worker_modules() -> dict[str, Path]:
    """Every module under worker/ by dotted name; a package's ``__init__.py`` is the package's module."""
    modules = {}
    for path in sorted((ROOT / "worker").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _worker_imports(name: str, path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, str | None]]:
    """(module imported, name taken from it or None) for each worker import in ``name``, lazy ones too. An
    import of ``worker.a.b`` is one of ``worker.a.b``, or of its nearest parent that is a module."""

    def nearest(dotted: str) -> str:
        while dotted not in modules and "." in dotted:
            dotted = dotted.rpartition(".")[0]
        return dotted

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "worker" or alias.name.startswith("worker."):
                    yield nearest(alias.name), None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if base != "worker" and not base.startswith("worker."):
                continue
            yield nearest(base), None
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full, None) if full in modules else (nearest(base), alias.name)


def test_worker_modules_import_each_other_without_cycles() -> None:
    import graphlib

    modules = _worker_modules()
    graph = {
        name: {target for target, _ in _worker_imports(name, path, modules)} - {name}
        for name, path in modules.items()
    }
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as cycle:
        pytest.fail("import cycle among worker modules: " + " -> ".join(reversed(cycle.args[1])), pytrace=False)


def test_no_worker_module_imports_another_ones_private_names() -> None:
    modules = _worker_modules()
    private = [
        f"{name} imports {source}.{taken}"
        for name, path in modules.items()
        for source, taken in _worker_imports(name, path, modules)
        if taken and taken.startswith("_") and not taken.startswith("__") and source != name
    ]
    assert not private, private
