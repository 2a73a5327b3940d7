# The CEMA edge agent (`cema-edge run`): forward-only ONNX Runtime inference, selection and
# upload; admin HTTP (/healthz, /readyz, /metrics) on 9091, state (outbox, applied parameters)
# in the volume /var/lib/cema. Configure with CEMA_EDGE_* variables or a TOML file
# (CEMA_EDGE_CONFIG); mount the model (and its manifest) and the device token. The
# Fashion-MNIST test set is inside for the built-in shift scenarios.
#
# From source (the default target; the builder needs a Rust image):
#   docker build -f docker/edge.Dockerfile -t cema-edge .
# From binaries built on the host, on a locally made base (what docker/ci.sh does):
#   bash docker/stage.sh edge docker/dist/edge
#   docker build -f docker/edge.Dockerfile --target prebuilt --build-arg RUNTIME_IMAGE=cema-base:bookworm -t cema-edge .
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUNTIME_IMAGE} AS runtime-base
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/cema --no-create-home \
        --shell /usr/sbin/nologin cema \
    && mkdir -p /var/lib/cema /opt/cema/bin /opt/cema/models \
    && chown cema:cema /var/lib/cema
COPY docker/healthcheck.sh /opt/cema/bin/healthcheck
ENV PATH=/opt/cema/bin:$PATH \
    ORT_DYLIB_PATH=/opt/cema/lib/libonnxruntime.so \
    CEMA_FASHION_MNIST_DIR=/opt/cema/data/fashion-mnist \
    CEMA_EDGE_DATA_DIR=/var/lib/cema \
    CEMA_EDGE_MODEL=/opt/cema/models/student.onnx \
    CEMA_EDGE_ADMIN_ADDR=0.0.0.0:9091 \
    CEMA_LOG=info,ort=error \
    CEMA_HEALTH_PORT=9091
WORKDIR /opt/cema
VOLUME /var/lib/cema
EXPOSE 9091
USER cema
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=3 CMD ["/opt/cema/bin/healthcheck"]
# SIGTERM (docker stop) finishes the batch, drains the outbox (CEMA_EDGE_DRAIN_TIMEOUT) and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["cema-edge"]
CMD ["run"]

# Binaries staged on the host in docker/dist/edge (docker/stage.sh).
FROM runtime-base AS prebuilt
COPY docker/dist/edge/ /opt/cema/

FROM ${RUST_IMAGE} AS builder
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN CEMA_SKIP_DATASET=1 bash scripts/setup.sh \
    && cargo build --release --locked -p cema-edge \
    && bash docker/stage.sh edge /out

FROM runtime-base AS runtime
COPY --from=builder /out/ /opt/cema/
