# syntax=docker/dockerfile:1
# `make image` builds it with the version, commit and commit time as labels. Two builds of one
# commit install the same packages: the base is pinned to a Python patch release and a Debian
# suite, and every Python package comes from deploy/requirements.lock (versions and hashes).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# Stage 1: a virtualenv with the locked packages, then the exporter built with the locked
# setuptools (no index, nothing unpinned).
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY deploy/requirements.lock ./
RUN python -m venv /opt/mtt-exporter \
    && /opt/mtt-exporter/bin/pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md LICENSE MANIFEST.in ./
COPY mtt_exporter ./mtt_exporter
RUN /opt/mtt-exporter/bin/pip install --no-cache-dir --no-deps --no-build-isolation --no-index . \
    && /opt/mtt-exporter/bin/pip check \
    && /opt/mtt-exporter/bin/pip uninstall --yes setuptools

# Stage 2: the virtualenv, run as a fixed non-root uid.
FROM ${PYTHON_IMAGE}
ARG VERSION=""
ARG REVISION=""
ARG CREATED=""
LABEL org.opencontainers.image.title="mtt-call-exporter" \
      org.opencontainers.image.description="Prometheus exporter for MTT call-progress notifications" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/mtt-call-exporter/mtt-call-exporter"
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin exporter \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/mtt-exporter
COPY --from=build /opt/mtt-exporter /opt/mtt-exporter
USER 10001:10001
# the only directory written (state, records): a volume or tmpfs under `docker run --read-only`
ENV PATH=/opt/mtt-exporter/bin:$PATH \
    MTT_EXPORTER_LISTEN=0.0.0.0:9888 MTT_EXPORTER_DATA_DIR=/var/lib/mtt-exporter \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
EXPOSE 9888
# asks the exporter (PID 1) where it listens, whatever its flags (`mtt-exporter healthcheck -h`);
# every 30 s: loading the settings costs about 0.3-0.5 s of CPU per check
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 CMD ["mtt-exporter", "healthcheck"]
ENTRYPOINT ["mtt-exporter"]
