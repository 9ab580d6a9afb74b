# fleetwatch: one image for every service (the entry point is the CLI).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    FLEETWATCH_DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[dask,s3]" && useradd --create-home fleetwatch && mkdir -p /data \
    && chown fleetwatch /data
USER fleetwatch
VOLUME ["/data"]
ENTRYPOINT ["fleetwatch"]
CMD ["--help"]
