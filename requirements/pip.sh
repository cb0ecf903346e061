#!/bin/sh
# pip inside a Docker build (Dockerfile, serving/Dockerfile, mlflow/Dockerfile): the index's CA
# bundle and a pip.conf arrive as BuildKit secrets (--secret id=pip_cert / id=pip_conf; see
# tests/container/build.sh), used when present and never written into a layer. Usage, in a RUN
# that mounts the secrets and this file:  sh /tmp/pip.sh install ...
[ ! -s /run/secrets/pip_cert ] || export PIP_CERT=/run/secrets/pip_cert
[ ! -s /run/secrets/pip_conf ] || export PIP_CONFIG_FILE=/run/secrets/pip_conf
exec python -m pip "$@"
