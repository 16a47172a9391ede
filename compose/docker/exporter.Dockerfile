# The one-shot exporter: HF model -> ONNX -> fused INT8 -> Triton model repository.
# Carries torch (CPU build by default). Build context: the repository root.
#   docker build -f compose/docker/exporter.Dockerfile -t emotion-stream/exporter:0.1.0 .
# TORCH_PIP_OPTIONS picks where torch comes from: PyTorch's CPU-only index by default
# (PyPI's Linux torch is the CUDA build and pulls ~4 GB of CUDA libraries). An offline
# build overrides it and PIP_OPTIONS with a wheelhouse (compose/ci/stage.sh).
ARG PYTHON_BASE=python:3.11.14-slim-bookworm

# The pinned requirements, read from pyproject.toml: the dependency layers below are keyed
# on these lists alone, so an edit elsewhere in pyproject.toml does not reinstall torch.
FROM ${PYTHON_BASE} AS requirements
COPY pyproject.toml compose/docker/requirements.py /src/
RUN python3 /src/requirements.py /src/pyproject.toml export > /src/requirements.txt \
 && grep '^torch==' /src/requirements.txt > /src/torch.txt

# torch first, from its own index; then the rest, which finds torch satisfied.
FROM ${PYTHON_BASE} AS deps
ARG PIP_OPTIONS=""
ARG TORCH_PIP_OPTIONS="--index-url https://download.pytorch.org/whl/cpu"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
COPY --from=requirements /src/torch.txt /src/
RUN /opt/venv/bin/pip install ${TORCH_PIP_OPTIONS} -r /src/torch.txt
COPY --from=requirements /src/requirements.txt /src/
RUN /opt/venv/bin/pip install ${PIP_OPTIONS} -r /src/requirements.txt

FROM ${PYTHON_BASE}
ARG PIP_OPTIONS=""
ARG UID=10001
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# /models and the HF cache exist owned by the user, so the named volumes Compose mounts
# there start out writable by it.
RUN useradd --system --uid "${UID}" --create-home --home-dir /home/emotion \
      --shell /usr/sbin/nologin emotion \
 && mkdir -p /models /home/emotion/.cache/huggingface \
 && chown -R emotion /models /home/emotion
COPY --from=deps /opt/venv /opt/venv
# The project itself last: a source change rebuilds only this layer.
COPY pyproject.toml README.md /src/
COPY emotion_stream /src/emotion_stream
COPY worker /src/worker
COPY exporter /src/exporter
COPY compose /src/compose
RUN /opt/venv/bin/pip install ${PIP_OPTIONS} --no-deps /src \
 && rm -rf /src \
 && /opt/venv/bin/python -c "import exporter.pipeline, torch"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/home/emotion/.cache/huggingface \
    EMOTION_STREAM_MODEL_REPOSITORY=/models
USER ${UID}
ENTRYPOINT ["emotion-stream"]
CMD ["export", "--output", "/models"]
