# Worker image: the same `imtel` console script as on a laptop (`imtel worker`, `imtel migrate ...`).
# Multi-stage: dependencies are installed into a venv in the build stage; the runtime stage has no
# compiler, no pip cache and runs as an unprivileged user on a read-only root filesystem (k8s/).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler for the native request-log decoder (pipeline/ingest/_fastlog.c); the runtime stage needs none.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY schemas ./schemas
# A plain install: the worker's dependencies only (no [embedded] extra: no chDB, no bundled broker),
# and schemas/ inside the package (pipeline.schema.definitions). The import checks fail the build when
# the decoder was skipped (setuptools builds it as optional) or the contracts did not ship.
RUN pip install .
# The checks run outside the source tree, so they import the installed package.
WORKDIR /
RUN python -c "import pipeline.ingest._fastlog" \
 && python -c "from pipeline.config.policy import load_policy; load_policy()"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 imtel \
 && useradd --system --uid 10001 --gid imtel --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin imtel \
 && mkdir -p /var/lib/imtel \
 && chown imtel:imtel /var/lib/imtel
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IMTEL_DATA_DIR=/var/lib/imtel \
    IMTEL_WEB_HOST=0.0.0.0
# faust writes its local state relative to the working directory unless told otherwise.
WORKDIR /var/lib/imtel
USER 10001:10001
EXPOSE 6066
ENTRYPOINT ["imtel"]
CMD ["worker"]
