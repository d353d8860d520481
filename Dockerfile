# syntax=docker/dockerfile:1
# One image for the admission webhook and the in-pod connector (non-root, no compilers).
#
# BASE_IMAGE must provide python3 (>= 3.11) with venv and pip. The e2e cluster passes a
# local Debian bookworm image (`hpc-offload e2e cluster load-image`); elsewhere the default
# public image is used.
ARG BASE_IMAGE=python:3.11-slim
# GO_IMAGE builds the lean follower (follower/, standard library only: no module download).
# The e2e cluster passes its local Debian image with the host's Go mounted at /usr/local/go.
ARG GO_IMAGE=golang:1.24-bookworm

FROM ${GO_IMAGE} AS follower
ARG GOCACHE_DIR=/tmp/go-cache
WORKDIR /src
COPY follower/ ./
RUN PATH="/usr/local/go/bin:$PATH" CGO_ENABLED=0 GOTOOLCHAIN=local GOPROXY=off GOFLAGS= GOCACHE="$GOCACHE_DIR" \
    go build -trimpath -ldflags="-s -w" -o /out/hpc-offload-follow .

FROM ${BASE_IMAGE} AS builder
# pip settings a build host may pass in (e.g. a CA bundle for a TLS-intercepting proxy)
ARG PIP_CERT
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_DEFAULT_TIMEOUT=60
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python3 -m venv /opt/hpc-offload
# Dependencies first, from pyproject.toml and the pinned constraints.txt alone:
# this layer is reused while only code changes.
COPY pyproject.toml constraints.txt ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['webhook']))" > /tmp/deps.txt \
 && /opt/hpc-offload/bin/pip wheel --wheel-dir /wheels -c constraints.txt -r /tmp/deps.txt
# Then the project's own wheel, and a venv installed only from wheels: the final stage copies
# the venv, so neither pip caches, sources nor build tools ship.
COPY . .
RUN /opt/hpc-offload/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/hpc-offload/bin/pip install --no-index --find-links /wheels "hpc-offload[webhook]" \
 && /opt/hpc-offload/bin/pip uninstall -y pip \
 && find /opt/hpc-offload -name __pycache__ -prune -exec rm -rf {} +

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="hpc-offload" \
      org.opencontainers.image.description="Kubernetes admission webhook and connector that run pods as HPC (SLURM) jobs" \
      org.opencontainers.image.licenses="Apache-2.0"
# openssh-client: the connector's low-memory SSH transport (profile "ssh_client": "openssh")
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openssh-client \
 && rm -rf /var/lib/apt/lists/*
RUN (getent group hpc || groupadd --system --gid 10001 hpc) \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/hpc --create-home \
        --shell /usr/sbin/nologin hpc
COPY --from=builder /opt/hpc-offload /opt/hpc-offload
# relay mode: the connector hands a followed job to this ~8 MiB program (docs/relay.md)
COPY --from=follower /out/hpc-offload-follow /opt/hpc-offload/bin/hpc-offload-follow
# Runs `args` given alone: connector arguments (the paper's Fig. 3 Job) go to hpc-connector,
# a program name (`hpc-offload serve`) runs as given; a pod's `command` replaces it.
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/hpc-offload-entrypoint
ENV PATH=/opt/hpc-offload/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /home/hpc
ENTRYPOINT ["/usr/local/bin/hpc-offload-entrypoint"]
CMD ["hpc-offload", "--help"]
