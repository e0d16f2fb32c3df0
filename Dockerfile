# veil: confidential face detection. The image's entrypoint is the `veil` command:
#   docker build -t veil:0.1.0 .
#   docker run --rm -v "$PWD/data:/data" veil:0.1.0 evaluate --dataset /data/fddb
# CPU by default. For NVIDIA GPUs, build on a CUDA base with a CUDA build of torch:
#   docker build -t veil:0.1.0-cuda \
#       --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
# The reference FaceBoxes weights, fitted noise and reference decoder ship inside the veil package
# (veil.assets, SHA-256 verified at load); $VEIL_WEIGHTS / $VEIL_NOISE_DIR on a volume override them.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG VEIL_EXTRAS=serve,k8s,notebook
ARG JUPYTERLAB_VERSION=4.6.6

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# CUDA bases have no Python; the slim base has one. openssl: the DataOps Toolkit's JupyterLab
# workspaces make their TLS certificate with it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssl ca-certificates \
    && if ! command -v python3 >/dev/null; then \
         apt-get install -y --no-install-recommends python3 python3-venv; fi \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# torch first, pinned, from the index that matches the base (CPU or CUDA).
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /opt/veil
COPY pyproject.toml README.md ./
COPY src ./src
# veil itself (its dependencies are pinned or bounded in pyproject.toml) and a pinned JupyterLab.
# hadolint ignore=DL3013
RUN pip install ".[${VEIL_EXTRAS}]" "jupyterlab==${JUPYTERLAB_VERSION}"

# The notebooks land in /workspace, which JupyterLab workspaces copy onto their volume.
COPY notebooks /workspace/notebooks

# UID 1000 (the manifests' runAsUser/fsGroup); Ubuntu bases already have a user with it.
RUN if id -u 1000 >/dev/null 2>&1; then userdel --remove "$(id -nu 1000)"; fi \
    && useradd --create-home --uid 1000 --shell /bin/bash veil \
    && chown -R veil:veil /workspace
USER 1000
ENV VEIL_CACHE_DIR=/home/veil/.cache/veil
WORKDIR /workspace

ENTRYPOINT ["veil"]
CMD ["--help"]
