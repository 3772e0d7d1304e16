# consul-reg as a container image, run as registrator was:
#   docker build -t consul-reg .
#   docker run -d --name consul-reg --net=host -v /var/run/docker.sock:/tmp/docker.sock consul-reg consul://localhost:8500
# Offline (no registry, no PyPI): scripts/build-image.sh builds a local base
# (BASE) and puts the wheels of the package and its dependencies in wheels/.
ARG BASE=python:3.11-slim

# Stage 1: wheels for the package and every dependency, installed into a venv.
FROM ${BASE} AS build
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
    /opt/consul-reg/venv/bin/consul-reg --version

# Stage 2: the base plus the venv; no compiler, no wheels, no pip.
FROM ${BASE}
# The probes land in /opt/consul-reg/checks, for other images:
#   COPY --from=consul-reg /opt/consul-reg/checks/ /checks/
COPY --from=build /opt/consul-reg /opt/consul-reg
ENV PATH=/opt/consul-reg/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1
# Its own container is never registered, whatever env it is given (a label wins over env).
LABEL SERVICE_IGNORE=true \
      org.opencontainers.image.title=consul-reg \
      org.opencontainers.image.description="Registers Docker containers' services in the local Consul agent"
STOPSIGNAL SIGTERM
# Exec form: consul-reg is PID 1 and receives SIGTERM from `docker stop` itself.
ENTRYPOINT ["consul-reg"]
CMD []
