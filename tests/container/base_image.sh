#!/usr/bin/env bash
# The Dockerfile's base image (its ARG PYTHON_IMAGE, python:3.11-slim-bookworm), made available
# to the local Docker engine: already there -> nothing to do; pullable -> pulled; otherwise (no
# registry reachable, as on the CI machine) a stand-in is built from Debian's packages with
# debootstrap and `docker import`ed under the same name:
#
#   Debian bookworm (minbase) + python3.11, python3-venv, python3-pip, ca-certificates, with
#   /usr/local/bin/python, python3, pip, pip3 and the environment of the official image (PATH,
#   LANG), and pip allowed to install outside a venv as there (no EXTERNALLY-MANAGED marker);
#   like Debian's slim images, no docs/man pages/translations and no apt caches.
#
# The stand-in is labelled org.opencontainers.image.description="stand-in ..." so it can be told
# apart (docker image inspect). It is only ever used where the real image can't be pulled; the
# Dockerfile needs nothing from it beyond what the official image has.
#
# Usage: bash tests/container/base_image.sh [--rebuild]     (root, or a user in the docker group
# for the pull; debootstrap needs root). Env: DOCKER (client, default docker),
# DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/../.."
DOCKER=${DOCKER:-docker}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
IMAGE=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile | head -n1)
[ -n "$IMAGE" ] || { echo "base_image.sh: no 'ARG PYTHON_IMAGE=' line in Dockerfile" >&2; exit 2; }

if [ "${1:-}" != "--rebuild" ] && $DOCKER image inspect "$IMAGE" > /dev/null 2>&1; then
  echo "base image $IMAGE: present"
  exit 0
fi
if [ "${1:-}" != "--rebuild" ] && timeout 120 $DOCKER pull -q "$IMAGE" > /dev/null 2>&1; then
  echo "base image $IMAGE: pulled"
  exit 0
fi

echo "base image $IMAGE: not pullable here; building a stand-in with debootstrap (a few minutes)"
command -v debootstrap > /dev/null || { echo "base_image.sh: debootstrap is not installed (apt-get install -y debootstrap)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "base_image.sh: debootstrap needs root" >&2; exit 2; }
case "$IMAGE" in
  *bookworm*) SUITE=bookworm ;;
  *) echo "base_image.sh: $IMAGE names no Debian release this script knows (bookworm)" >&2; exit 2 ;;
esac
PY=$(printf '%s' "$IMAGE" | sed -n 's/^python:\([0-9]*\.[0-9]*\).*/\1/p')
[ -n "$PY" ] || { echo "base_image.sh: can't read the Python version from $IMAGE" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/hsnet-base.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOTFS=$WORK/rootfs
debootstrap --variant=minbase --include="python$PY,python3-venv,python3-pip,ca-certificates" \
  "$SUITE" "$ROOTFS" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
  || { tail -n 30 "$WORK/debootstrap.log" >&2; exit 1; }

# what the official image has: python/pip on /usr/local/bin, Debian's sources, no apt caches
for name in python python3; do ln -sf "/usr/bin/python$PY" "$ROOTFS/usr/local/bin/$name"; done
for name in pip pip3; do ln -sf /usr/bin/pip3 "$ROOTFS/usr/local/bin/$name"; done
rm -f "$ROOTFS/usr/lib/python$PY/EXTERNALLY-MANAGED" "$ROOTFS/etc/apt/sources.list"
# Debian's slim docker images: no docs, man pages or translations installed, apt keeps no caches
cat > "$ROOTFS/etc/dpkg/dpkg.cfg.d/docker" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG
cat > "$ROOTFS/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
echo 'Acquire::Languages "none";' > "$ROOTFS/etc/apt/apt.conf.d/docker-no-languages"
echo 'Acquire::GzipIndexes "true";' > "$ROOTFS/etc/apt/apt.conf.d/docker-gzip-indexes"
echo 'Apt::AutoRemove::SuggestsImportant "false";' > "$ROOTFS/etc/apt/apt.conf.d/docker-autoremove-suggests"
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
rm -rf "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/groff/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/lintian/*
cat > "$ROOTFS/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
  "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache
: > "$ROOTFS/etc/machine-id"  # (no host identity in the image)
"$ROOTFS/usr/bin/python$PY" --version > /dev/null

tar --numeric-owner -C "$ROOTFS" -c . | $DOCKER import \
  --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL org.opencontainers.image.description=\"stand-in for $IMAGE: debootstrap $SUITE + python$PY (tests/container/base_image.sh)\"" \
  --change 'CMD ["python3"]' - "$IMAGE" > /dev/null
$DOCKER run --rm "$IMAGE" sh -c 'python --version && pip --version && python -m venv /tmp/v' > /dev/null
echo "base image $IMAGE: stand-in built ($($DOCKER image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
