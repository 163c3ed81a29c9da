# mlwarden: the sidecar proxy by default (`docker run -v ./sidecar.yaml:/etc/mlwarden/sidecar.yaml
# mlwarden`); `docker run mlwarden demo` runs the demo instead. Multi-stage: the build stage
# installs mlwarden into a virtual environment, and the final image copies only that
# environment (no wheels, no sources, no build tools in any of its layers) and runs as a
# non-root user.
#
# BASE is any image with Python 3.11+ and its venv module at the same path in both stages:
# the official slim image by default, or one made from distribution packages where that
# cannot be pulled (`--build-arg BASE=localhost/...`; tests/test_image.py makes one from
# Debian's python3 and python3-venv).
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
RUN python3 -m venv /opt/mlwarden
ENV PATH=/opt/mlwarden/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY middleware ./middleware
COPY sidecar ./sidecar
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[sidecar]' \
    && pip install --no-cache-dir --no-index --find-links /wheels 'mlwarden[sidecar]==0.1.0'

FROM ${BASE}
RUN useradd --create-home --uid 10001 mlwarden \
    && mkdir -p /etc/mlwarden /var/lib/mlwarden \
    && chown 10001 /var/lib/mlwarden
COPY --from=build /opt/mlwarden /opt/mlwarden
ENV PATH=/opt/mlwarden/bin:$PATH
USER 10001
WORKDIR /home/mlwarden
# The proxy port and the admin port (metrics, health, status, events).
EXPOSE 8080 9901
# Liveness of the sidecar: its admin port answers (no curl in a slim image: Python does it).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9901/-/healthy', timeout=2)"]
ENTRYPOINT ["mlwarden"]
# The config is a mounted file (a ConfigMap in Kubernetes); the ledger goes to /var/lib/mlwarden.
CMD ["sidecar", "--config", "/etc/mlwarden/sidecar.yaml"]
