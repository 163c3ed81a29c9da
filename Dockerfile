# mlwarden: the sidecar proxy by default (`docker run -v ./sidecar.yaml:/etc/mlwarden/sidecar.yaml
# mlwarden`); `docker run mlwarden demo` runs the demo instead. Multi-stage: wheels are built in
# the first stage, the final image has no build tools and runs as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY middleware ./middleware
COPY sidecar ./sidecar
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[sidecar]'

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 mlwarden \
    && mkdir -p /etc/mlwarden /var/lib/mlwarden \
    && chown 10001 /var/lib/mlwarden
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'mlwarden[sidecar]==0.1.0' \
    && rm -rf /wheels
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
