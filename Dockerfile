# syntax=docker/dockerfile:1
# Two images from one file (docker-compose.yml builds both):
#   api:    the service only (FastAPI, SQLAlchemy, Optuna, plotly.js for the dashboard, Swagger UI for /docs); no TensorFlow
#   worker: the trainer only (TensorFlow CPU, Keras, the bundled datasets); no FastAPI, no Optuna
# GPU workers: build the worker target with --build-arg TENSORFLOW="tensorflow[and-cuda]==2.21.0"
# (run it with the NVIDIA container toolkit: `--gpus all`, or `deploy.resources` in compose).
# Dependencies are installed from pyproject.toml's pins before the source is copied, so a change to
# the code rebuilds only the last small layers.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_SYSTEM_PYTHON=1 \
    UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
RUN pip install uv==0.13.8 \
 && useradd --create-home --uid 10001 --user-group hpsearch
WORKDIR /app
COPY pyproject.toml ./

FROM base AS api
RUN uv pip install -r pyproject.toml --extra service
COPY README.md ./
COPY hpsearch ./hpsearch
COPY service ./service
RUN uv pip install --no-deps . && rm -rf build *.egg-info \
 && mkdir -p /data && chown hpsearch:hpsearch /data
USER hpsearch
# Uploaded datasets live under /data/artifacts (a volume in docker-compose.yml).
ENV HPSEARCH_LOG_FORMAT=json \
    HPSEARCH_DATA_DIR=/data
EXPOSE 8000
# `serve` with no local workers: it refuses a network address while HPSEARCH_AUTH is off.
CMD ["hpsearch", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "0"]

FROM base AS worker
ARG TENSORFLOW=""
RUN uv pip install -r pyproject.toml --extra trainer \
 && if [ -n "$TENSORFLOW" ]; then uv pip uninstall tensorflow-cpu && uv pip install "$TENSORFLOW"; fi
COPY README.md ./
COPY hpsearch ./hpsearch
COPY trainer ./trainer
RUN uv pip install --no-deps . && rm -rf build *.egg-info \
 && mkdir -p /home/hpsearch/.cache/hpsearch/datasets \
 && chown -R hpsearch:hpsearch /home/hpsearch/.cache
USER hpsearch
# Uploaded datasets are cached by hash under ~/.cache/hpsearch/datasets (shared by the workers of
# one host through a volume in docker-compose.yml).
ENV HPSEARCH_LOG_FORMAT=json \
    TF_CPP_MIN_LOG_LEVEL=2
CMD ["hpsearch", "worker"]
