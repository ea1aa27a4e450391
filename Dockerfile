# GPU image of the video-caption worker (RunPod serverless, vLLM 0.26.0).
#
#   docker buildx build -t video-caption-worker .
#   # optional: bake the model into the image (gated repo: also --secret id=HF_TOKEN,env=HF_TOKEN)
#   docker buildx build --build-arg MODEL_NAME=Qwen/Qwen2.5-Omni-7B -t video-caption-worker:omni7b .

# CUDA 13.0.2 because the PyPI torch 2.11.0 that vLLM 0.26.0 pins is built for CUDA 13.0
# (it depends on cuda-toolkit==13.0.2 and nvidia-cudnn-cu13 wheels, so cuDNN comes from pip and
# the plain runtime flavour is enough). Ubuntu 24.04 ships Python 3.12, the version the worker
# is tested with. RunPod's worker-vllm built on the same CUDA release (13.0.2-devel-ubuntu22.04)
# before it moved onto the vllm-openai image; devel adds the CUDA compiler and headers (GBs more).
FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04

# Only for the apt step; an ENV would leak into the running container.
ARG DEBIAN_FRONTEND=noninteractive

# python3-venv: a venv sidesteps PEP 668 (Ubuntu 24.04 marks the system Python as externally managed).
# gcc, libc6-dev, python3-dev: Triton (torch.compile / vLLM kernels) compiles a small C launcher
#   against Python.h the first time it runs, so a C toolchain is a runtime need, not a build one.
# No ffmpeg: the PyAV wheel bundles its own FFmpeg libraries.
# Versions are not pinned: the Ubuntu archive keeps only the newest build of each package in
# noble-updates/noble-security, so a pinned version stops installing after the next security upload.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates \
        gcc \
        libc6-dev \
        python3 \
        python3-dev \
        python3-venv \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The runtime is exactly requirements.txt, then requirements-nodeps.txt without dependencies (the files
# the CPU test environment also installs): runpod, whose fastapi requirement conflicts with vLLM's cap
# (docs/configuration.md, "runpod and fastapi"; its other requirements are in requirements.txt). Only pip
# itself is upgraded first, pinned, because Ubuntu's venv seeds an older pip.
COPY requirements.txt requirements-nodeps.txt ./
RUN python3 -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir pip==26.3 \
    && pip install --no-cache-dir -r requirements.txt \
    && pip install --no-cache-dir --no-deps -r requirements-nodeps.txt

# Optional model baking. Empty (the default) keeps the image model-free: the worker downloads
# MODEL_NAME at start into HF_HOME below. Set, the snapshot goes to /models/<repo id> and the
# worker loads it from there. This layer sits before the code COPY so editing the code does not
# re-download the weights. The token, if any, is a build secret (never stored in a layer) that
# huggingface_hub reads from the file HF_TOKEN_PATH names; HF_HOME points at a throwaway
# directory so no download cache stays in the layer.
ARG MODEL_NAME=""
RUN --mount=type=secret,id=HF_TOKEN,required=false \
    if [ -n "$MODEL_NAME" ]; then \
        HF_HOME=/tmp/hf-build HF_TOKEN_PATH=/run/secrets/HF_TOKEN \
            hf download "$MODEL_NAME" --local-dir "/models/$MODEL_NAME" \
        && rm -rf /tmp/hf-build "/models/$MODEL_NAME/.cache"; \
    fi

# Baked: point the worker at the local copy. Not baked: the worker's default model, which must
# equal Settings.model_name's default in worker/config.py (tests/test_dockerfile.py checks it);
# an empty MODEL_NAME here would override that default with "".
ARG BAKED_MODEL_PATH=${MODEL_NAME:+/models/${MODEL_NAME}}
ENV MODEL_NAME=${BAKED_MODEL_PATH:-Qwen/Qwen2.5-Omni-7B}

# Same cache layout as RunPod's worker-vllm: on RunPod, /runpod-volume is the network volume
# (weights survive cold starts) and RunPod's model caching puts snapshots in
# /runpod-volume/huggingface-cache/hub, which is where HF_HUB_CACHE then looks.
ENV HF_HOME=/runpod-volume/huggingface-cache \
    HF_HUB_CACHE=/runpod-volume/huggingface-cache/hub

# The Rust tokenizers thread pool can panic in containers whose process limit is below the host's
# CPU count (worker-vllm sets this for the same reason). DL3064 matches "TOKEN" in the name; this
# is a switch, not a credential.
# hadolint ignore=DL3064
ENV TOKENIZERS_PARALLELISM=false

COPY pyproject.toml handler.py ./
COPY worker/ ./worker/
# Installs the project itself (no dependencies: requirements.txt has them) so that vLLM finds the worker's
# model plugins (video-SALMONN 2+) through the vllm.general_plugins entry point in every process it starts.
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e .

CMD ["python", "-u", "handler.py"]
