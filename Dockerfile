# syntax=docker/dockerfile:1
# kserve-cache images. Two targets from one build:
#   docker build --target webhook -t ghcr.io/kserve-cache/kserve-cache:0.1.0 .
#   docker build --target fetcher -t ghcr.io/kserve-cache/kserve-cache-fetcher:0.1.0 .
# The base is pinned to a patch release; pin it by digest too in CI
# (PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: makes the wheel; its tools never reach the final images ----
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m pip install "build>=1.2,<2"
COPY pyproject.toml README.md ./
COPY webhook ./webhook
RUN python -m build --wheel --outdir /dist

# ---- runtime: a virtualenv on the slim base, no compilers, numeric non-root user ----
FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    PATH=/opt/kserve-cache/bin:$PATH
RUN python -m venv /opt/kserve-cache
ENTRYPOINT ["kserve-cache"]

# ---- webhook: kserve-cache serve ----
FROM runtime AS webhook
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    /opt/kserve-cache/bin/pip install /dist/kserve_cache-*.whl
USER 65532:65532
EXPOSE 8443
CMD ["serve", "--host", "0.0.0.0", "--port", "8443"]

# ---- fetcher: the injected init container (kserve-cache fetch), with KServe's downloader ----
FROM runtime AS fetcher
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    /opt/kserve-cache/bin/pip install "$(ls /dist/kserve_cache-*.whl)[fetcher]"
USER 65532:65532
CMD ["--help"]
