#!/usr/bin/env bash
# A Docker engine for `make image-test`: use the one that answers, else install Debian's
# docker.io (and debootstrap, for the stand-in base image) if missing and start dockerd in the
# background (no iptables/bridge: the image tests use the host network). Needs root for that.
set -euo pipefail
if docker info > /dev/null 2>&1 || /usr/bin/docker info > /dev/null 2>&1; then
  exit 0
fi
if ! command -v dockerd > /dev/null || ! command -v debootstrap > /dev/null; then
  echo "engine.sh: installing docker.io and debootstrap (Debian packages)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap > /dev/null
fi
log=${DOCKERD_LOG:-/var/log/dockerd.log}
echo "engine.sh: starting dockerd (log: $log)"
nohup dockerd --iptables=false --bridge=none > "$log" 2>&1 &
for _ in $(seq 60); do
  if /usr/bin/docker info > /dev/null 2>&1; then
    exit 0
  fi
  sleep 1
done
echo "engine.sh: dockerd did not answer within 60 s; see $log" >&2
tail -20 "$log" >&2
exit 2
