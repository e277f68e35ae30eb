# Patch-IB-CXR pipeline image. The torch wheels bundle their CUDA runtime, so a slim
# Python base runs on GPUs through the NVIDIA container toolkit (`docker run --gpus all`).
# Versions match pyproject.toml (tests/test_packaging.py checks it).
FROM python:3.11.7-slim-bookworm

ENV DVC_NO_ANALYTICS=1 \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace
# Dependencies first, so code changes do not reinstall them (the README's setup command).
COPY pyproject.toml README.md ./
RUN pip install -e ".[dev]"
COPY . .
RUN git config --global --add safe.directory /workspace

# Data and the Hugging Face cache are mounted as volumes, e.g.
#   docker run --gpus all --shm-size 8g \
#     -v /datasets/MIMIC-CXR-JPG:/data/mimic-cxr-jpg:ro \
#     -v ~/.cache/huggingface:/root/.cache/huggingface:ro \
#     patch-ib-cxr dvc exp run -S data.root=/data/mimic-cxr-jpg \
#       -S data.reports=/data/mimic-cxr-jpg/mimic-cxr-reports.zip
CMD ["dvc", "repro"]
