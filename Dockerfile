# syntax=docker/dockerfile:1
#
# Switchboard container image.
#
#   docker build -t switchboard:dev .
#   docker run --rm -p 8080:8080 \
#     -e SWITCHBOARD_JWT_SECRET=change-me \
#     -e SWITCHBOARD_ADMIN_TOKEN=change-me-too \
#     -e SWITCHBOARD_ADAPTER_KEY=change-me-three \
#     switchboard:dev
#
# Off loopback (0.0.0.0 below) all three credentials are required: without
# them the node refuses to start (exit 2) instead of using development values.
#
# Build stage: the whole workspace manifest set is needed because Cargo.lock
# covers both members ("." and "loadtest") and Cargo.toml declares a bench.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
WORKDIR /build
# Optional cargo features, e.g. --build-arg CARGO_FEATURES=otel (OpenTelemetry traces).
ARG CARGO_FEATURES=""

COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY loadtest ./loadtest

# The cache mounts keep the registry and incremental artifacts between builds
# on the same builder; the binary is copied out of the cached target dir so it
# ends up in the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin switchboard --features "${CARGO_FEATURES}" \
    && install -D -m 0755 target/release/switchboard /out/switchboard

# Runtime stage: distroless "cc" (glibc + libgcc, no shell, no package manager).
FROM ${RUNTIME_IMAGE}

LABEL org.opencontainers.image.title="switchboard" \
      org.opencontainers.image.description="Real-time WebSocket gateway for conversation inboxes" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/switchboard /usr/local/bin/switchboard

# Listen on all interfaces inside the container (the binary defaults to
# 127.0.0.1:8080, which is unreachable from outside the container).
ENV SWITCHBOARD_LISTEN=0.0.0.0:8080

# Numeric uid/gid so Kubernetes can verify runAsNonRoot without /etc/passwd.
USER 10001:10001

EXPOSE 8080

# No HEALTHCHECK: distroless has no shell/curl, and Kubernetes uses its own
# probes (GET /healthz, GET /readyz) instead.
ENTRYPOINT ["switchboard"]
CMD ["serve"]
