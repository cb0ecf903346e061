# syntax=docker/dockerfile:1
# The one image every pipeline step runs in (components/ use it as their base image) and the
# MLflow server's (mlflow/k8s/mlflow.yaml):
#
#   docker build -t ghcr.io/hsnet-pipeline/hsnet:0.1.0 .      # the tag components/__init__.py names
#   docker push ghcr.io/hsnet-pipeline/hsnet:0.1.0
#
# PyTorch comes from PyPI's Linux wheels, which are CUDA builds (the CUDA runtime and cuDNN are
# the nvidia-* wheels pinned in requirements/constraints.txt): on a GPU node the NVIDIA
# container toolkit supplies the driver, nothing else is needed. The MTCNN weights ship inside
# the facenet-pytorch wheel. The VGGFace2 stem weights are not baked in: point
# model.stem_weights at an s3:// copy (see the README).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment with hsnet and its pinned dependencies ----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements/constraints.txt requirements/constraints.txt
COPY pyproject.toml README.md ./
COPY hsnet hsnet
RUN pip install -c requirements/constraints.txt ".[all,server]" \
 && find /opt/venv -name "__pycache__" -prune -exec rm -rf {} + \
 && python -c "import hsnet, facenet_pytorch, kfp, mlflow, dvc, boto3, great_expectations"

# --- runtime: the environment, git (for dvc get), a non-root user -----------------------------
# gcc + libc headers: Triton compiles its small kernel launchers with the system C compiler when
# torch.compile runs on a GPU (train.compile: auto = CUDA graphs there, 3.7x eager on an H100).
FROM ${PYTHON_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 --user-group hsnet
COPY --from=build /opt/venv /opt/venv
COPY mlflow/server.sh /opt/hsnet/mlflow/server.sh
COPY params.yaml /opt/hsnet/params.yaml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DVC_NO_ANALYTICS=1 \
    GX_ANALYTICS_ENABLED=false \
    MPLCONFIGDIR=/tmp/matplotlib \
    HSNET_CACHE_DIR=/tmp/hsnet-cache \
    MLFLOW_HOST=0.0.0.0
# the MTCNN weights load from the installed wheel, with no network
RUN python -c "from facenet_pytorch import MTCNN; MTCNN(device='cpu')" && hsnet --help > /dev/null
USER 1000:1000
WORKDIR /home/hsnet
CMD ["hsnet", "--help"]
