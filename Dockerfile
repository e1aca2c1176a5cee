# syntax=docker/dockerfile:1
# toolgate image: `docker build -t toolgate:0.1.0 .` (BuildKit, the default builder since Docker 23).
#
# Base images are pinned by tag, not digest: digests could not be looked up where this file was
# written. For reproducible production builds, resolve them once and pin as
# `rust:1.95.0-slim-bookworm@sha256:…` and `gcr.io/distroless/cc-debian12:nonroot@sha256:…`.

# Build stage. rust:*-slim ships gcc and libc6-dev, which the bundled SQLite (libsqlite3-sys) needs;
# the protobuf definitions compile with protox, so there is no protoc dependency.
FROM rust:1.95.0-slim-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and the target directory between builds; the binary is
# copied out of the cached target directory so that the next stage can see it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin toolgate \
    && install -D -m 0755 target/release/toolgate /out/toolgate \
    && mkdir -p /out/data

# Runtime stage: glibc and libgcc only, no shell, no package manager, user 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
# checkov:skip=CKV_DOCKER_2: Kubernetes ignores HEALTHCHECK; the Helm chart probes grpc.health.v1 natively (and the image has no shell or client to run a HEALTHCHECK command with)
LABEL org.opencontainers.image.title="toolgate" \
      org.opencontainers.image.description="A gRPC policy decision point for AI agents' tool calls" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/toolgate /usr/local/bin/toolgate
# SQLite mode keeps its database in /data, owned by the runtime user so that a fresh Docker volume
# mounted there is writable. The chart mounts a PersistentVolumeClaim there instead (fsGroup 65532).
# No VOLUME: orchestrators decide what to mount.
COPY --from=builder --chown=65532:65532 /out/data /data
ENV TOOLGATE_LISTEN=0.0.0.0:50051 \
    TOOLGATE_METRICS_LISTEN=0.0.0.0:9464 \
    TOOLGATE_LOG_FORMAT=json
# The working directory makes the server's default database URL (sqlite://toolgate.db) land in
# /data too: `docker run -v toolgate-data:/data -p 50051:50051 toolgate:0.1.0` just works.
WORKDIR /data
USER 65532:65532
# 50051: gRPC (toolgate.v1.PolicyService, grpc.health.v1, reflection); 9464: Prometheus /metrics.
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/toolgate"]
CMD ["serve"]
