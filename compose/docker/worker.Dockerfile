# The streaming worker: slim, no torch, non-root. Build context: the repository root.
#   docker build -f compose/docker/worker.Dockerfile -t emotion-stream/worker:0.1.0 .
# PYTHON_BASE is any Debian-based image with python3.11 and its venv module (the stand-in
# build of compose/ci/stage.sh passes a local one). PIP_OPTIONS lets an offline build
# point pip at a wheelhouse (--no-index --find-links ...).
ARG PYTHON_BASE=python:3.11.14-slim-bookworm

# The pinned requirements, read from pyproject.toml: the dependency layer below is keyed on
# this list alone, so an edit elsewhere in pyproject.toml does not reinstall everything.
FROM ${PYTHON_BASE} AS requirements
COPY pyproject.toml compose/docker/requirements.py /src/
RUN python3 /src/requirements.py /src/pyproject.toml > /src/requirements.txt

FROM ${PYTHON_BASE} AS deps
ARG PIP_OPTIONS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
COPY --from=requirements /src/requirements.txt /src/
RUN /opt/venv/bin/pip install ${PIP_OPTIONS} -r /src/requirements.txt \
 && ! /opt/venv/bin/python -c "import torch" 2>/dev/null

FROM ${PYTHON_BASE}
ARG PIP_OPTIONS=""
ARG UID=10001
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN useradd --system --uid "${UID}" --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin emotion
COPY --from=deps /opt/venv /opt/venv
# The project itself last: a source change rebuilds only this layer.
COPY pyproject.toml README.md /src/
COPY emotion_stream /src/emotion_stream
COPY worker /src/worker
COPY exporter /src/exporter
COPY compose /src/compose
RUN /opt/venv/bin/pip install ${PIP_OPTIONS} --no-deps /src \
 && rm -rf /src \
 && /opt/venv/bin/python -c "import worker.app, emotion_stream.cli"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EMOTION_STREAM_MODEL_REPOSITORY=/models
USER ${UID}
ENTRYPOINT ["emotion-stream"]
CMD ["worker"]
