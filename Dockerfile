# mtbert: CPU image by default. For a GPU image pass a CUDA base with Python 3.11 and the CUDA wheel index:
#   docker build -t mtbert .
#   docker build -t mtbert:cuda --build-arg BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 .
# Run the pipeline on data mounted at /data:
#   docker run --rm -v "$PWD/../shared/data:/data:ro" mtbert
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DVC_NO_ANALYTICS=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

# git: DVC needs a repository; wordnet-base: synonym augmentation, read offline.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git wordnet-base \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY mtbert ./mtbert
COPY flows ./flows
RUN pip install --index-url "${TORCH_INDEX}" torch==2.13.0 \
    && pip install -e . torch==2.13.0

COPY params.yaml dvc.yaml data.dvc ./
COPY .dvc/config .dvc/.gitignore ./.dvc/
COPY scripts ./scripts
RUN git init -q . && git add -A && git -c user.name=mtbert -c user.email=mtbert@localhost commit -qm image

RUN useradd --create-home --uid 10001 mtbert && chown -R 10001 /app
USER 10001
VOLUME ["/data"]
# Import the mounted data, version it, and rebuild the pipeline (quick profile by default).
CMD ["bash", "-c", "mtbert -q import-data --source /data && dvc add -q data && dvc repro && dvc metrics show"]
