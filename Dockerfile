# The speedlayer services' image: one image, the service chosen by the command (the entrypoint
# is `speedlayer`): up (the default: the embedded stack), ingest, process, sink, api, init-aws,
# replay, candles, lambda-run, ... (docker-compose.yml runs each of them).
#
#   docker build -t speedlayer:0.1.0 .
#   docker run --rm -p 8000:8000 speedlayer:0.1.0                  # simulator -> ... -> API :8000
#   docker run --rm speedlayer:0.1.0 ingest --bus kafka            # one service
#
# Base images are pinned by exact tag (no digest: none could be looked up without a registry
# here; pin with `image@sha256:...` where policy asks for it). Dependencies come from
# constraints.txt; the package is installed at build time into /opt/venv; the container runs as
# the unprivileged user `speedlayer` with its data (SQLite) in /app/data.

# -- the dashboard's chart library (npm: lightweight-charts, pinned by package-lock.json) ------
FROM node:24.19.0-trixie-slim AS dashboard
WORKDIR /src
COPY package.json package-lock.json ./
# --omit=dev: the chart library alone (the AWS emulators and the CDK are dev dependencies).
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

# -- the virtualenv: dependencies (constraints.txt), then the package --------------------------
FROM python:3.11.16-slim-trixie AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The dependencies first, in their own layer: rebuilt only when pyproject.toml or
# constraints.txt change, not on every source change.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r requirements.txt
COPY README.md ./
COPY speedlayer speedlayer
COPY api api
COPY ingest ingest
COPY processors processors
COPY launch launch
COPY flink_sql flink_sql
RUN pip install --no-cache-dir --no-deps -c constraints.txt . \
    && pip check

# -- the image ---------------------------------------------------------------------------------
FROM python:3.11.16-slim-trixie
LABEL org.opencontainers.image.title="speedlayer" \
      org.opencontainers.image.description="Real-time OHLCV candles from Polygon 1-minute bars" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 speedlayer \
    && useradd --system --uid 10001 --gid speedlayer --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin speedlayer \
    && mkdir -p /app/data \
    && chown speedlayer:speedlayer /app/data
COPY --from=build /opt/venv /opt/venv
# api/dashboard.py serves the chart library from node_modules next to the installed packages
# (PROJECT_ROOT/node_modules/lightweight-charts/dist/...): site-packages in this image.
COPY --from=dashboard /src/node_modules/lightweight-charts /opt/venv/lib/python3.11/site-packages/node_modules/lightweight-charts
# and Swagger UI's assets for /docs the same way (api/dashboard.py, SWAGGER_UI_DIR)
COPY --from=dashboard /src/node_modules/swagger-ui-dist /opt/venv/lib/python3.11/site-packages/node_modules/swagger-ui-dist
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SPEEDLAYER_HOST=0.0.0.0 \
    SPEEDLAYER_DB=/app/data/speedlayer.db \
    SPEEDLAYER_HEALTH_FILE=/tmp/speedlayer-health.json
WORKDIR /app
# The user `speedlayer`, by number (a platform's run-as-non-root check can verify it).
USER 10001:10001
EXPOSE 8000
# /readyz for `up` and `api`; the health file for ingest, process and sink (launch/healthcheck.py).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "launch.healthcheck"]
ENTRYPOINT ["speedlayer"]
CMD ["up"]
