# syntax=docker/dockerfile:1
#
# The Strata broker image: `docker build -t ghcr.io/strata-io/strata:0.1.0 .`
#
# Build stage: the release binary. Cargo's registry and the target directory live in
# BuildKit cache mounts, so a rebuild after a source change recompiles only what changed.
ARG RUST_VERSION=1
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# Only what the build reads (see .dockerignore): the workspace manifests, the lock file,
# the crates, and the manifest and library root of the end-to-end test package (a
# workspace member, so cargo must be able to load it; none of it is compiled).
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY tests/Cargo.toml tests/lib.rs ./tests/
RUN --mount=type=cache,id=strata-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=strata-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=strata-target,target=/src/target,sharing=locked \
    cargo build --release --locked -p strata \
    && install -D -m 0755 target/release/strata /out/strata

# Runtime stage: Debian slim, because the binary links glibc (TLS is rustls: no OpenSSL)
# and because the health check below needs a shell. The CA bundle comes from the build
# stage (rustls reads the system roots to verify S3 over https), so the runtime stage
# installs no packages.
FROM debian:bookworm-slim AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="strata" \
      org.opencontainers.image.description="Kafka-compatible broker with tiered storage on S3" \
      org.opencontainers.image.source="https://github.com/strata-io/strata" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
# A fixed non-root user and group (10001), so that volumes and Kubernetes
# securityContext (runAsUser/fsGroup 10001) agree on who owns the data directory.
RUN groupadd --system --gid 10001 strata \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
       --home-dir /var/lib/strata --no-create-home --shell /usr/sbin/nologin strata \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/strata
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /out/strata /usr/local/bin/strata
# Defaults for a container: data on /var/lib/strata (mount a volume there), every
# listener on all interfaces. Set STRATA_ADVERTISED_LISTENER (and, in a cluster,
# STRATA_NODE_ID, STRATA_META_VOTERS, STRATA_META_ADVERTISED) to the addresses other
# machines reach this one at; see docs/configuration.md for every setting.
ENV STRATA_DATA_DIR=/var/lib/strata \
    STRATA_KAFKA_LISTEN=0.0.0.0:9092 \
    STRATA_META_LISTEN=0.0.0.0:9093 \
    STRATA_HTTP_LISTEN=0.0.0.0:9644 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 10001:10001
WORKDIR /var/lib/strata
# Kafka, metadata quorum RPCs, HTTP (/healthz, /readyz, /metrics).
EXPOSE 9092 9093 9644
# Healthy once the broker serves Kafka (GET /readyz answers 200), through bash's
# /dev/tcp, so no HTTP client has to be installed. Log recovery after a crash can take
# a while, hence the start period.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["bash", "-c", "exec 3<>\"/dev/tcp/127.0.0.1/${STRATA_HTTP_LISTEN##*:}\" && printf 'GET /readyz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["strata"]
CMD ["serve"]
