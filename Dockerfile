# The project's two images (components/ use them as base images; see components/__init__.py):
#
#   default target   ghcr.io/hsnet-pipeline/hsnet:0.1.0        crop, train, evaluate, register, and
#                    every hsnet verb: PyTorch (CUDA build), MTCNN, MLflow, DVC, KFP
#   --target slim    ghcr.io/hsnet-pipeline/hsnet:0.1.0-slim   fetch, import, validate: the same package
#                    and pins without torch, MLflow or matplotlib (under 1 GB instead of 7)
#
# Build with BuildKit (the pip steps take the index's CA bundle as a secret, and cache wheels):
#   bash tests/container/build.sh   # both images (and serving/Dockerfile's), tagged with the source
#                                   # commit (--release: and the release); make image-test builds them so
# which runs (with the OCI source/revision/version labels as --label flags):
#   DOCKER_BUILDKIT=1 docker build --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt \
#     --build-arg GIT_COMMIT=$(git rev-parse HEAD) --label org.opencontainers.image.revision=$(git rev-parse HEAD) \
#     -t ghcr.io/hsnet-pipeline/hsnet:0.1.0 .
# Proxies: docker build's own HTTP(S)_PROXY/NO_PROXY build args (never recorded in the image);
# a CA bundle or pip.conf only as secrets (pip_cert, pip_conf; requirements/pip.sh uses them):
# nothing of either stays in a layer.
#
# PyTorch comes from PyPI's Linux wheels, which are CUDA builds (the CUDA runtime and cuDNN are
# the nvidia-* wheels pinned in requirements/constraints.txt): on a GPU node the NVIDIA
# container toolkit supplies the driver, nothing else is needed. The MTCNN weights ship inside
# the facenet-pytorch wheel. The VGGFace2 stem weights are not baked in: point
# model.stem_weights at an s3:// copy (see the README).
#
# Non-root and the KFP launcher: both images run as uid 1000 (user hsnet), which owns /minio,
# /s3 and /gcs (where the KFP v2 launcher puts the local copies of artifacts) and its home; nothing
# is world-writable beyond the base image's /tmp.
#
# Labels: each image names itself (org.opencontainers.image.title); the source, revision and
# version labels, the same for all three images, are build.sh's --label flags.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment with hsnet and its pinned dependencies ----------------------
# The dependencies alone, from pyproject.toml and the pins (an empty README stands in for the
# real one; hsnet/__init__.py holds the version pyproject reads): editing the package's code
# doesn't touch this environment (see the wheel stage).
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements/constraints.txt requirements/constraints.txt
COPY pyproject.toml ./
COPY hsnet/__init__.py hsnet/__init__.py
RUN --mount=type=secret,id=pip_cert --mount=type=secret,id=pip_conf --mount=type=bind,source=requirements/pip.sh,target=/tmp/pip.sh \
    --mount=type=cache,target=/root/.cache/pip \
    touch README.md \
 && sh /tmp/pip.sh install -c requirements/constraints.txt ".[all,server]" \
 && pip uninstall -y hsnet
RUN find /opt/venv -name "__pycache__" -prune -exec rm -rf {} +

# --- wheel: the package itself (hsnet + components), installed last into both images, so that
# editing the code rebuilds a small layer, not the multi-GB environment's copy
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY hsnet hsnet
COPY components components
RUN --mount=type=secret,id=pip_cert --mount=type=secret,id=pip_conf --mount=type=bind,source=requirements/pip.sh,target=/tmp/pip.sh \
    --mount=type=cache,target=/root/.cache/pip \
    sh /tmp/pip.sh wheel --no-deps -w /wheels .

# --- build-slim: what fetch, import and validate need --------------------------------------------
# The package's requirements and its data + pipeline extras, read from pyproject.toml, less
# LEAVE_OUT (torch and what needs it: the model, crop, train, evaluate, register, predict; and
# matplotlib, only for plots); pip resolves the rest against the same pins.
FROM ${PYTHON_IMAGE} AS build-slim
ARG LEAVE_OUT="torch torchvision facenet-pytorch matplotlib"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements/constraints.txt requirements/constraints.txt
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip_cert --mount=type=secret,id=pip_conf --mount=type=bind,source=requirements/pip.sh,target=/tmp/pip.sh \
    --mount=type=cache,target=/root/.cache/pip \
    python -c "import re, sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
x = p['optional-dependencies']; skip = sys.argv[1].split(); \
print('\n'.join(r for r in p['dependencies'] + x['data'] + x['pipeline'] \
if re.match(r'[A-Za-z0-9_.-]+', r)[0].lower() not in skip))" "$LEAVE_OUT" > /tmp/requirements-slim.txt \
 && sh /tmp/pip.sh install -c requirements/constraints.txt -r /tmp/requirements-slim.txt \
 && rm /tmp/requirements-slim.txt
RUN find /opt/venv -name "__pycache__" -prune -exec rm -rf {} +

# --- runtime: what both images share: git (for dvc get), the non-root user and its directories --
FROM ${PYTHON_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 --user-group hsnet \
 && install -d -o 1000 -g 1000 -m 0755 /minio /s3 /gcs
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DVC_NO_ANALYTICS=1 \
    GX_ANALYTICS_ENABLED=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    MPLCONFIGDIR=/tmp/matplotlib \
    HSNET_CACHE_DIR=/tmp/hsnet-cache
WORKDIR /home/hsnet
CMD ["hsnet", "--help"]

# --- slim: the torch-free image ---------------------------------------------------------------
FROM runtime AS slim
COPY --from=build-slim /opt/venv /opt/venv
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-deps --no-index --no-cache-dir --disable-pip-version-check /wheels/hsnet-*.whl \
 && find /opt/venv -name "__pycache__" -prune -exec rm -rf {} + \
 && python -c "import hsnet, components, kfp, dvc, boto3, great_expectations" \
 && ! python -c "import torch" 2> /dev/null \
 && hsnet --help > /dev/null
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="hsnet (slim: no torch)"
ENV HSNET_GIT_COMMIT=$GIT_COMMIT
USER 1000:1000

# --- the image (default target) ---------------------------------------------------------------
# gcc + libc headers: Triton compiles its small kernel launchers with the system C compiler when
# torch.compile runs on a GPU (train.compile: auto = CUDA graphs there, 3.7x eager on an H100).
FROM runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-deps --no-index --no-cache-dir --disable-pip-version-check /wheels/hsnet-*.whl \
 && find /opt/venv -name "__pycache__" -prune -exec rm -rf {} + \
 && python -c "import hsnet, components, facenet_pytorch, kfp, mlflow, dvc, boto3, great_expectations" \
 && python -c "from facenet_pytorch import MTCNN; MTCNN(device='cpu')" && hsnet --help > /dev/null
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title=hsnet
ENV HSNET_GIT_COMMIT=$GIT_COMMIT
USER 1000:1000
