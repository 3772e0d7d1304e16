# consul-reg as a container image, run as registrator was:
#   docker build -t consul-reg .
#   docker run -d --name consul-reg --net=host -v /var/run/docker.sock:/tmp/docker.sock consul-reg consul://localhost:8500
# Hardened, the documented way (no capability, a read-only root, nothing written):
#   docker run -d --name consul-reg --net=host --read-only --cap-drop ALL --security-opt no-new-privileges \
#     -v /var/run/docker.sock:/tmp/docker.sock consul-reg consul://localhost:8500
# The Docker socket is root on the host whatever the user inside: these flags
# bound what a flaw in the daemon could do to the container itself, not that.
# Offline (no registry, no PyPI): scripts/build-image.sh builds a local base
# (BASE) and puts the wheels of the package and its dependencies in wheels/.
# The default base, pinned: Python 3.11.13 on Debian 12 (bookworm), by the digest
# of its multi-platform index. To move it: pick the tag, then
#   docker buildx imagetools inspect python:3.11.N-slim-bookworm   (its Digest)
ARG BASE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1
# The OCI labels' version: pyproject.toml's, which the build stage checks against the installed
# `consul-reg --version` (a release that forgets this line fails to build). Source and licence likewise.
ARG VERSION=0.1.0
ARG SOURCE=https://github.com/consul-reg/consul-reg

# Stage 1: wheels for the package and every dependency, installed into a venv.
FROM ${BASE} AS build
ARG VERSION
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# .dockerignore lets through only what the image needs (and wheels/ when present).
COPY . /src/
RUN set -eu; \
    python3 -m venv /opt/consul-reg/venv; \
    pip=/opt/consul-reg/venv/bin/pip; \
    if [ -d /src/wheels ]; then \
      $pip install --no-index --find-links /src/wheels consul-reg; \
    else \
      $pip wheel --wheel-dir /tmp/wheels /src && $pip install --no-index --find-links /tmp/wheels consul-reg; \
    fi; \
    $pip uninstall -y -q pip setuptools; \
    mkdir -p /opt/consul-reg/checks && cp /src/checks/* /opt/consul-reg/checks/ && chmod 0755 /opt/consul-reg/checks/*; \
    got=$(/opt/consul-reg/venv/bin/consul-reg --version); \
    [ "$got" = "consul-reg ${VERSION}" ] || { echo "the package says '$got', the Dockerfile's VERSION ${VERSION}" >&2; exit 1; }

# Stage 2: the base plus the venv; no compiler, no wheels, no pip.
FROM ${BASE}
ARG BASE
ARG VERSION
ARG SOURCE
# The probes land in /opt/consul-reg/checks, for other images:
#   COPY --from=consul-reg /opt/consul-reg/checks/ /checks/
COPY --from=build /opt/consul-reg /opt/consul-reg
# Nothing is written at run time: the bytecode was compiled at build time, and the
# daemon logs to stderr only and makes no files (a read-only root needs no tmpfs).
ENV PATH=/opt/consul-reg/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Its own container is never registered, whatever env it is given (a label wins over env).
LABEL SERVICE_IGNORE=true \
      org.opencontainers.image.base.name="${BASE}" \
      org.opencontainers.image.title=consul-reg \
      org.opencontainers.image.description="Registers Docker containers' services in the local Consul agent" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses=MIT
STOPSIGNAL SIGTERM
# Exec form: consul-reg is PID 1 and receives SIGTERM from `docker stop` itself.
ENTRYPOINT ["consul-reg"]
CMD []
