# syntax=docker/dockerfile:1
# kserve-cache images: two targets from one build (`make image` builds both, `make push` pushes
# them and prints their digests):
#   webhook  ghcr.io/kserve-cache/kserve-cache:<version>          kserve-cache serve (and gc, stats)
#   fetcher  ghcr.io/kserve-cache/kserve-cache-fetcher:<version>  the injected init container
#                                                                  (KServe's downloader inside)
# Python dependencies are installed at the exact versions of constraints/runtime.txt.
#
# The base is pinned by tag and by the digest of its multi-architecture index. That digest was
# taken from public Dockerfiles that pin the same tag; it could not be checked against Docker
# Hub from the machine that wrote this file. Check it (and refresh it with the tag) with
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm
# and override it for one build with --build-arg PYTHON_IMAGE=... (or make image PYTHON_IMAGE=...).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# ---- builder: makes the wheel; its tools never reach the final images ----
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m pip install "build>=1.2,<2"
COPY pyproject.toml README.md LICENSE ./
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
    --mount=type=bind,source=constraints/runtime.txt,target=/constraints.txt \
    /opt/kserve-cache/bin/pip install -c /constraints.txt /dist/kserve_cache-*.whl
USER 65532:65532
EXPOSE 8443
CMD ["serve", "--host", "0.0.0.0", "--port", "8443"]

# ---- fetcher: the injected init container (kserve-cache fetch), with KServe's downloader ----
FROM runtime AS fetcher
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    --mount=type=bind,source=constraints/runtime.txt,target=/constraints.txt \
    /opt/kserve-cache/bin/pip install -c /constraints.txt "$(ls /dist/kserve_cache-*.whl)[fetcher]"
USER 65532:65532
CMD ["--help"]
