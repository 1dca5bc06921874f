# syntax=docker/dockerfile:1
# Stage 1: build the wheel.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mtt_exporter ./mtt_exporter
# with the redis extra: the image can share call state (--state-backend)
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[redis]"

# Stage 2: run it as a fixed non-root uid.
FROM python:3.11-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mtt-call-exporter" \
      org.opencontainers.image.description="Prometheus exporter for MTT call-progress notifications" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/mtt-call-exporter/mtt-call-exporter"
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin exporter \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/mtt-exporter
USER 10001:10001
# the only directory written (state, records): a volume or tmpfs under `docker run --read-only`
ENV MTT_EXPORTER_LISTEN=0.0.0.0:9888 MTT_EXPORTER_DATA_DIR=/var/lib/mtt-exporter \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
EXPOSE 9888
# no curl in slim: ask the health endpoint with Python itself (over TLS when MTT_EXPORTER_TLS_CERT is set)
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os,ssl,sys,urllib.request as u; e=os.environ; p=e.get('MTT_EXPORTER_LISTEN','0.0.0.0:9888').rpartition(':')[2]; s='https' if e.get('MTT_EXPORTER_TLS_CERT') else 'http'; sys.exit(u.urlopen(f'{s}://127.0.0.1:{p}/-/healthy', timeout=2, context=ssl._create_unverified_context()).status != 200)"]
ENTRYPOINT ["mtt-exporter"]
