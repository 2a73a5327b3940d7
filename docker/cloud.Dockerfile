# The CEMA cloud service (`cema-cloud serve`): gRPC on 50051, admin HTTP (/healthz, /readyz,
# /metrics, /scopes) on 9090, state in the volume /var/lib/cema. The built-in models are in
# /opt/cema/models; the default config serves them.
#
# From source (the default target; the builder needs a Rust image):
#   docker build -f docker/cloud.Dockerfile -t cema-cloud .
# From binaries built on the host, on a locally made base (what docker/ci.sh does):
#   bash docker/stage.sh cloud docker/dist/cloud
#   docker build -f docker/cloud.Dockerfile --target prebuilt --build-arg RUNTIME_IMAGE=cema-base:bookworm -t cema-cloud .
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUNTIME_IMAGE} AS runtime-base
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/cema --no-create-home \
        --shell /usr/sbin/nologin cema \
    && mkdir -p /var/lib/cema /opt/cema/bin \
    && chown cema:cema /var/lib/cema
COPY docker/healthcheck.sh /opt/cema/bin/healthcheck
COPY docker/fleet-init.sh /opt/cema/bin/fleet-init
ENV PATH=/opt/cema/bin:$PATH \
    ORT_DYLIB_PATH=/opt/cema/lib/libonnxruntime.so \
    CEMA_CLOUD_DATA_DIR=/var/lib/cema \
    CEMA_CLOUD_GRPC_ADDR=0.0.0.0:50051 \
    CEMA_CLOUD_ADMIN_ADDR=0.0.0.0:9090 \
    CEMA_LOG=info,ort=error \
    CEMA_HEALTH_PORT=9090
WORKDIR /opt/cema
VOLUME /var/lib/cema
EXPOSE 50051 9090
USER cema
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 CMD ["/opt/cema/bin/healthcheck"]
# SIGTERM (docker stop) finishes the current step, flushes the state and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["cema-cloud"]
CMD ["serve"]

# Binaries staged on the host in docker/dist/cloud (docker/stage.sh).
FROM runtime-base AS prebuilt
COPY docker/dist/cloud/ /opt/cema/

FROM ${RUST_IMAGE} AS builder
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN CEMA_SKIP_DATASET=1 bash scripts/setup.sh \
    && cargo build --release --locked -p cema-cloud \
    && bash docker/stage.sh cloud /out

FROM runtime-base AS runtime
COPY --from=builder /out/ /opt/cema/
