# syntax=docker/dockerfile:1
#
# tuf-exporter container image.
#
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" -t tuf-exporter:0.1.0 .
#   docker run --read-only --tmpfs /tmp -p 9929:9929 \
#     -v "$PWD/deploy/docker/config.yml:/etc/tuf-exporter/config.yml:ro" \
#     -v "$PWD/deploy/kubernetes/common/trusted-roots:/etc/tuf-exporter/trusted-roots:ro" \
#     -v tuf-state:/var/lib/tuf-exporter \
#     tuf-exporter:0.1.0
#
# Mount the configuration and every file it names (trusted roots, secrets). The configuration
# must put its state under the volume: `state_dir: /var/lib/tuf-exporter` (the default, ./state
# next to the configuration file, is on the read-only root).
#
# Base image: pinned by tag. Pin it by digest for reproducible builds; get the digest of the
# tag's current multi-arch index with
#   docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}'
# (or `crane digest python:3.11-slim-bookworm`) and write both stages' FROM lines as
#   FROM python:3.11-slim-bookworm@sha256:<digest>
# Renovate / Dependabot keep a pinned digest up to date.

# ---------------------------------------------------------------------------------------------
# builder: the finished virtual environment in /opt/tuf-exporter (the project and all its
# dependencies, byte code compiled), without pip and setuptools
FROM python:3.11-slim-bookworm AS builder

ARG VERSION=0.1.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip wheel --wheel-dir /wheels . \
    && if ! ls "/wheels/tuf_exporter-${VERSION}-"*.whl >/dev/null 2>&1; then \
         echo "VERSION=${VERSION} does not match the version in pyproject.toml:" /wheels/tuf_exporter-*.whl >&2; \
         exit 1; \
       fi \
    && python -m venv /opt/tuf-exporter \
    && /opt/tuf-exporter/bin/pip install --no-index --find-links=/wheels "tuf-exporter==${VERSION}" \
    && /opt/tuf-exporter/bin/python -m pip uninstall --yes pip setuptools \
    && /opt/tuf-exporter/bin/python -m compileall -q /opt/tuf-exporter \
    && /opt/tuf-exporter/bin/tuf-exporter --version

# ---------------------------------------------------------------------------------------------
# runtime: a virtual environment with the wheels installed, nothing else
FROM python:3.11-slim-bookworm AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="tuf-exporter" \
      org.opencontainers.image.description="Prometheus exporter that watches TUF repositories and their mirrors with a real python-tuf client" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/tuf-exporter/tuf-exporter" \
      org.opencontainers.image.url="https://github.com/tuf-exporter/tuf-exporter" \
      org.opencontainers.image.documentation="https://github.com/tuf-exporter/tuf-exporter/blob/main/README.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="tuf-exporter" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

# Read-only root file system: no byte code written at run time (it is compiled at install
# time), HOME is the state volume; `serve` writes its temporary files below state_dir, and
# only check-config and the demo use /tmp (mount a small tmpfs there: `docker run --read-only
# --tmpfs /tmp`, an emptyDir in Kubernetes).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/tuf-exporter \
    TMPDIR=/tmp \
    PATH=/opt/tuf-exporter/bin:${PATH} \
    TUF_EXPORTER_VERSION=${VERSION} \
    TUF_EXPORTER_HEALTHCHECK_URL=http://127.0.0.1:9929/-/healthy

# A fixed uid/gid above the system range (so no --system: useradd warns about the range).
RUN groupadd --gid 10001 tuf-exporter \
    && useradd --uid 10001 --gid 10001 --no-create-home --no-log-init \
         --home-dir /var/lib/tuf-exporter --shell /usr/sbin/nologin tuf-exporter \
    && mkdir -p /var/lib/tuf-exporter /etc/tuf-exporter \
    && chown 10001:10001 /var/lib/tuf-exporter \
    && chmod 0750 /var/lib/tuf-exporter

# The virtual environment only: no wheel, no source and no pip become a layer of this image.
# (A plain COPY --from also works where a cached builder stage would leave a bind mount empty,
# as podman's does.)
COPY --from=builder /opt/tuf-exporter /opt/tuf-exporter

# Client caches, history.sqlite, spool.sqlite and events.jsonl live here.
VOLUME /var/lib/tuf-exporter
WORKDIR /var/lib/tuf-exporter
USER 10001:10001
EXPOSE 9929

# No curl in slim images: ask /-/healthy with Python's urllib (any non-2xx answer or a
# connection error exits non-zero). With TLS or basic auth (--web.config.file) or another
# listen address, set TUF_EXPORTER_HEALTHCHECK_URL or override the HEALTHCHECK.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['TUF_EXPORTER_HEALTHCHECK_URL'], timeout=4).close()"]

ENTRYPOINT ["tuf-exporter"]
CMD ["serve", "--config", "/etc/tuf-exporter/config.yml"]
