# syntax=docker/dockerfile:1
#
# electd and elect-run in a small Debian image.
#
#   docker build -t electd:0.1.0 --build-arg ELECTD_GIT_COMMIT=$(git rev-parse --short=12 HEAD) .
#   docker run --rm electd:0.1.0 --endpoints http://etcd:2379 --election my-service
#
# tests/deploy.rs checks this file: the stages, that both binaries are built and copied to the
# paths ENTRYPOINT and HEALTHCHECK use, the non-root user and tini.

# ---- build ------------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
# etcd-client compiles etcd's protobuf definitions at build time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The build context has no .git, so `--version` says "commit unknown" unless the commit is
# passed in: docker build --build-arg ELECTD_GIT_COMMIT=$(git rev-parse --short=12 HEAD) .
ARG ELECTD_GIT_COMMIT=
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
# Not built here, but Cargo.toml declares the benchmark target and cargo refuses a manifest
# whose declared targets are missing.
COPY benches ./benches
RUN cargo build --release --locked --bins

# ---- runtime ----------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# tini runs as PID 1: it forwards SIGTERM to electd (which stops its command, revokes its lease
# and exits 0) and reaps orphans that the wrapped command's children leave behind.
# curl is for HEALTHCHECK and for Kubernetes exec probes, so the HTTP API can stay on loopback.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 electd \
 && useradd --system --uid 10001 --gid electd --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin electd \
 && install -d -o electd -g electd -m 0750 /run/electd
COPY --from=build /src/target/release/electd /usr/local/bin/electd
COPY --from=build /src/target/release/elect-run /usr/local/bin/elect-run
USER 10001:10001
# No EXPOSE: the HTTP API binds 127.0.0.1:4040 by default, reachable only inside the container
# (or pod). Control actions go over the Unix socket (--socket), never over TCP.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:4040/healthz"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/electd"]
