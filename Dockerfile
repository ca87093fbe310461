# syntax=docker/dockerfile:1
# cdc-gateway container image.
#
#   docker build -t cdc-gateway .
#   docker run --rm -p 8080:8080 -e CDC_GATEWAY_BROKERS=kafka:9092 cdc-gateway
#
# Every setting is a CDC_GATEWAY_* environment variable (each flag of `cdc-gateway --help`
# reads CDC_GATEWAY_<FLAG_IN_UPPER_SNAKE>), so the image needs no command-line arguments.

# ---- build stage -----------------------------------------------------------------------
FROM rust:1-bookworm AS build

# librdkafka is compiled from source by rdkafka-sys: a C toolchain and make
# (build-essential), pkg-config, perl (its configure script), OpenSSL and zlib headers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        build-essential pkg-config perl libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# The whole build context (.dockerignore keeps target/, .git and the deployment files out),
# so workspace members and anything the crate includes are there. The cargo registry is a
# BuildKit cache mount: crates are downloaded once, not on every source change. Without a
# -p flag cargo builds the root package only, into target/release/cdc-gateway.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    cargo build --release --locked \
 && test -x target/release/cdc-gateway

# ---- runtime stage ---------------------------------------------------------------------
FROM debian:bookworm-slim

# libssl3: librdkafka's TLS; ca-certificates: broker certificates for SASL_SSL/SSL;
# curl: the HEALTHCHECK below. (zlib1g is part of the base image.)
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 cdc-gateway \
 && useradd --system --uid 10001 --gid cdc-gateway --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin cdc-gateway

# Only the binary.
COPY --from=build /src/target/release/cdc-gateway /usr/local/bin/cdc-gateway

USER 10001:10001

# Listen on every interface inside the container; override any other setting with
# CDC_GATEWAY_* variables (CDC_GATEWAY_BROKERS, CDC_GATEWAY_SOURCE_TOPICS, ...). On this
# address the gateway starts only with CDC_GATEWAY_AUTH=jwt (and its key), or with
# CDC_GATEWAY_ALLOW_UNAUTHENTICATED=true if every client may read every row.
ENV CDC_GATEWAY_LISTEN=0.0.0.0:8080

EXPOSE 8080

# Liveness only (/healthz answers 200 while the process serves). Readiness (/readyz: Kafka
# connected and partitions assigned) is for load balancers and orchestrators. If you change
# the port in CDC_GATEWAY_LISTEN, override this check too.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS -o /dev/null http://127.0.0.1:8080/healthz || exit 1

# SIGTERM starts the graceful shutdown (readyz 503, --shutdown-delay, close 1001 to clients,
# offsets committed, exit 0 within --drain-timeout).
STOPSIGNAL SIGTERM

ENTRYPOINT ["/usr/local/bin/cdc-gateway"]
