# mlwarden: the command line and the demo today; the sidecar proxy becomes the default command
# when it lands. Multi-stage: wheels are built in the first stage, the final image has no
# build tools and runs as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY middleware ./middleware
COPY sidecar ./sidecar
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[sidecar]'

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 mlwarden
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'mlwarden[sidecar]==0.1.0' \
    && rm -rf /wheels
USER 10001
WORKDIR /home/mlwarden
HEALTHCHECK --interval=30s --timeout=3s CMD ["mlwarden", "--help"]
ENTRYPOINT ["mlwarden"]
CMD ["demo"]
