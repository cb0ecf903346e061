#!/usr/bin/env bash
# Build the project's three images with BuildKit: Dockerfile's default target and --target slim (the
# pipeline's steps), and serving/Dockerfile (the model server, hsnet.deploy.SERVE_IMAGE).
#
#   bash tests/container/build.sh [--release] [--refs FILE]
#
# Tags: REPO:sha-<commit>, REPO:sha-<commit>-slim and SERVE_REPO:sha-<commit> always (commit = git
# rev-parse HEAD, 12 hex digits, "-dirty" when a file the build reads differs from HEAD); with
# --release also the release tags components/__init__.py and hsnet.deploy name (REPO:<version>,
# REPO:<version>-slim, SERVE_REPO:<version>), only from a clean checkout of the commit tagged
# v<version>. The commit, version and source (the origin when public, else SOURCE below) go into the OCI labels, the commit also into HSNET_GIT_COMMIT. --refs
# FILE: writes IMAGE=, SLIM_IMAGE=, SERVE_IMAGE= (the commit tags), COMMIT= and DOCKER= to FILE,
# for `make image-test`.
#
# The base image comes from tests/container/base_image.sh (pulled, or a stand-in where no
# registry answers). pip inside the build reaches the index with this machine's settings, none
# of which is stored in the images: a CA bundle (PIP_CERT, pip's global.cert, REQUESTS_CA_BUNDLE
# or SSL_CERT_FILE) as the BuildKit secret pip_cert; HSNET_PIP_CONF=FILE (a pip.conf, e.g. with a
# private index) as the secret pip_conf; HTTP(S)_PROXY/NO_PROXY as docker's predefined proxy
# build args. Env: PYTHON (with kfp installed; default .venv/bin/python), DOCKER (a client that
# can build with BuildKit; default: docker, or /usr/bin/docker when docker has no buildx).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
release=0 refs=""
while [ $# -gt 0 ]; do
  case "$1" in
    --release) release=1 ;;
    --refs) refs="$2"; shift ;;
    *) echo "build.sh: unknown argument $1 (usage: build.sh [--release] [--refs FILE])" >&2; exit 2 ;;
  esac
  shift
done

# the files the build reads (.dockerignore's allow-list)
context=$(sed -n 's/^!//p' .dockerignore | tr '\n' ' ')
# A release tag names one version of the code: Kubeflow keys a cached step on the image's name, not
# its digest, so a release tag built again from other code would serve results cached from the old.
# shellcheck disable=SC2086
if [ $release = 1 ] && { ! git rev-parse HEAD > /dev/null 2>&1 || [ -n "$(git status --porcelain -- Dockerfile serving/Dockerfile $context)" ]; }; then
  echo "build.sh: --release needs a clean checkout (files the image is built from differ from the commit:" \
       "$(git status --porcelain -- Dockerfile serving/Dockerfile $context 2> /dev/null | head -3 | tr '\n' ' ')); commit them," \
       "and raise hsnet's __version__ for every release (a release tag must never name other code)" >&2
  exit 2
fi
# ... and one commit: the one tagged v<version> (a later commit keeping the version is other code)
if [ $release = 1 ]; then
  version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' hsnet/__init__.py)
  tagged=$(git rev-parse -q --verify "refs/tags/v$version^{commit}" || true)
  if [ "$tagged" != "$(git rev-parse HEAD)" ]; then
    if [ -z "$tagged" ]; then
      echo "build.sh: --release builds the commit tagged v$version (hsnet's __version__): tag this one" \
           "(git tag v$version) if it is that release" >&2
    else
      echo "build.sh: --release: v$version (hsnet's __version__) is commit ${tagged:0:12}, not this one: raise" \
           "__version__ for new code (a release tag must never name other code)" >&2
    fi
    exit 2
  fi
fi

# a client that builds with BuildKit: docker with buildx, or a pre-23 client (built-in BuildKit)
pick_docker() {
  local d major
  for d in ${DOCKER:-} docker /usr/bin/docker; do
    command -v "$d" > /dev/null || continue
    if $d buildx version > /dev/null 2>&1; then echo "$d"; return; fi
    major=$($d version --format '{{.Client.Version}}' 2> /dev/null | cut -d. -f1)
    if [ -n "$major" ] && [ "$major" -lt 23 ] 2> /dev/null; then echo "$d"; return; fi
  done
  echo "build.sh: no docker client that can build with BuildKit (install docker-buildx, or set DOCKER)" >&2
  exit 2
}
DOCKER=$(pick_docker)
export DOCKER DOCKER_BUILDKIT=1
$DOCKER info > /dev/null 2>&1 || { echo "build.sh: the Docker engine is not answering ($DOCKER info)" >&2; exit 2; }

read -r RELEASE_IMAGE RELEASE_SLIM RELEASE_SERVE VERSION < <("$PYTHON" -c \
  "import hsnet, components as c; from hsnet.deploy import SERVE_IMAGE; print(c.IMAGE, c.SLIM_IMAGE, SERVE_IMAGE, hsnet.__version__)")
SOURCE=https://github.com/hsnet-pipeline/hsnet  # the images' OCI source label where the origin isn't public
REPO=${RELEASE_IMAGE%:*} SERVE_REPO=${RELEASE_SERVE%:*}

# the commit, and whether the files the build reads differ from it
if commit=$(git rev-parse HEAD 2> /dev/null); then
  # shellcheck disable=SC2086
  [ -z "$(git status --porcelain -- Dockerfile serving/Dockerfile $context)" ] || commit="$commit-dirty"
  source_url=$(git remote get-url origin 2> /dev/null | sed -E 's#^(https?://)[^/@]*@#\1#' || true)
  case $source_url in  # a local path (a CI clone) names no source: SOURCE's
    https://* | http://* | ssh://* | git@*) ;;
    *) source_url="" ;;
  esac
else
  commit=unknown source_url=""
fi
short=${commit:0:12}${commit#????????????????????????????????????????}  # 12 digits, then -dirty if any
[ "$commit" = unknown ] && short=unknown
IMAGE=$REPO:sha-$short
SLIM_IMAGE=$REPO:sha-$short-slim
SERVE_IMAGE=$SERVE_REPO:sha-$short

# the OCI labels the three images share (each Dockerfile stage adds its own title)
source_url=${source_url:-$SOURCE}
args=(--build-arg "GIT_COMMIT=$commit" --label "org.opencontainers.image.source=$source_url"
      --label "org.opencontainers.image.revision=$commit" --label "org.opencontainers.image.version=$VERSION")
for v in HTTP_PROXY HTTPS_PROXY NO_PROXY ALL_PROXY http_proxy https_proxy no_proxy all_proxy; do
  [ -z "${!v:-}" ] || args+=(--build-arg "$v")   # value from the environment, never on the command line
done
cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2> /dev/null || true)}
cert=${cert:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-}}}
[ -z "$cert" ] || [ ! -f "$cert" ] || args+=(--secret "id=pip_cert,src=$cert")
[ -z "${HSNET_PIP_CONF:-}" ] || args+=(--secret "id=pip_conf,src=$HSNET_PIP_CONF")
# no bridge network (dockerd --bridge=none): the build's RUN steps use the host's network
$DOCKER network inspect bridge > /dev/null 2>&1 || args+=(--network host)

bash tests/container/base_image.sh

tags=(-t "$IMAGE") slim_tags=(-t "$SLIM_IMAGE") serve_tags=(-t "$SERVE_IMAGE")
[ $release = 0 ] || { tags+=(-t "$RELEASE_IMAGE"); slim_tags+=(-t "$RELEASE_SLIM"); serve_tags+=(-t "$RELEASE_SERVE"); }
logs=$(mktemp -d "${TMPDIR:-/tmp}/hsnet-build.XXXXXX")
build() {  # LOG ARGS...: the build's output goes to LOG, its last lines to stderr if it fails
  local log=$1; shift
  if ! $DOCKER build --progress=plain "${args[@]}" "$@" . > "$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "build.sh: docker build $* failed; the whole output is in $log" >&2
    exit 1
  fi
}
start=$(date +%s)
build "$logs/slim.log" --target slim "${slim_tags[@]}"
build "$logs/image.log" "${tags[@]}"
build "$logs/serve.log" -f serving/Dockerfile "${serve_tags[@]}"
rm -rf "$logs"
echo "built $IMAGE, $SLIM_IMAGE and $SERVE_IMAGE in $(( $(date +%s) - start )) s (commit $commit)"
for r in "$IMAGE" "$SLIM_IMAGE" "$SERVE_IMAGE"; do
  $DOCKER image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$r"
done
if [ -n "$refs" ]; then
  printf 'IMAGE=%s\nSLIM_IMAGE=%s\nSERVE_IMAGE=%s\nCOMMIT=%s\nDOCKER=%s\n' "$IMAGE" "$SLIM_IMAGE" "$SERVE_IMAGE" \
    "$commit" "$DOCKER" > "$refs"
fi
