# syntax=docker/dockerfile:1
# The `pulse` image: one binary for every role (`pulse gateway|processor|
# dashboard|operator|up`). The operator runs it and starts its gateways,
# processors and dashboards from it. Build from the repository root:
#
#   docker build -t pulse:0.1.0 .
#
# It runs as user 65532 and writes nothing outside the volumes it is given,
# so it works with a read-only root file system.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# BuildKit caches the registry and the target directory between builds; the
# binary is copied out of the cache mount. Debug info is stripped (symbol
# names stay, so a backtrace still names functions).
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo cargo build --release --locked -p pulse --bin pulse \
 && install -D -m 0755 target/release/pulse /out/pulse

# bookworm-slim, not distroless: besides glibc the binary links zlib
# (librdkafka's compression), which distroless/cc lacks and slim carries, and
# OpenSSL (librdkafka's TLS to Kafka), installed here with the CA roots that
# `bus.tls` without `bus.tls_ca_file` trusts.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 65532 pulse \
 && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/pulse \
      --no-create-home --shell /usr/sbin/nologin pulse \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/pulse
COPY --from=build /out/pulse /usr/local/bin/pulse
# `pulse up` keeps its embedded engines' data in ./pulse-data: here, a volume
# when the root file system is read-only.
WORKDIR /var/lib/pulse
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/pulse"]
CMD ["--help"]
