# Stand-in for nvcr.io/nvidia/tritonserver (no registry here): the tritonserver binary of
# the nvidia-pytriton wheel (Triton 2.51, Python backend) behind a `tritonserver` command
# that takes the real one's options and serves each ONNX model through its Python-backend
# twin (compose/twin.py, onnxruntime on the same model.onnx). Context: the repository root.
ARG PYTHON_BASE=emotion-stream/standin-python:3.11-bookworm

# The pinned requirements (base + `local`), so the install below is keyed on them alone.
FROM ${PYTHON_BASE} AS requirements
COPY pyproject.toml compose/docker/requirements.py /src/
RUN python3 /src/requirements.py /src/pyproject.toml local > /src/requirements.txt \
 && echo "onnx==1.23.2" >> /src/requirements.txt

FROM ${PYTHON_BASE}
ARG PIP_OPTIONS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# curl: the Compose healthcheck calls it, as with NVIDIA's image; libpython3.11: the
# Python backend's stub links it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl libpython3.11 \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
COPY --from=requirements /src/requirements.txt /src/
RUN /opt/venv/bin/pip install ${PIP_OPTIONS} -r /src/requirements.txt
COPY pyproject.toml README.md /src/
COPY emotion_stream /src/emotion_stream
COPY worker /src/worker
COPY exporter /src/exporter
COPY compose /src/compose
RUN /opt/venv/bin/pip install ${PIP_OPTIONS} --no-deps /src \
 && pytriton="$(/opt/venv/bin/python -c 'import pytriton, os; print(os.path.dirname(pytriton.__file__))')" \
 && mkdir -p /opt/tritonserver/backends/python \
 && cp "$pytriton/tritonserver/backends/python/libtriton_python.so" \
       "$pytriton/tritonserver/backends/python/triton_python_backend_utils.py" \
       "$pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub" \
       /opt/tritonserver/backends/python/ \
 && install -m 0755 /src/compose/docker/standin/triton/tritonserver.py /opt/tritonserver/tritonserver.py \
 && printf '#!/bin/sh\nexec /opt/venv/bin/python /opt/tritonserver/tritonserver.py "$@"\n' \
      > /usr/local/bin/tritonserver \
 && chmod 0755 /usr/local/bin/tritonserver \
 && rm -rf /src
# The Python backend's stub imports numpy and onnxruntime from the venv first on PATH.
ENV PATH=/opt/venv/bin:$PATH
# root, as in NVIDIA's image: a bind-mounted repository may be readable by root alone.
WORKDIR /opt/tritonserver
CMD ["tritonserver", "--help"]
