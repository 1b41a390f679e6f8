# The idmatch binary in a small image: build stage with the Rust toolchain, runtime
# stage with the binary, the system CA bundle (https:// servers without --ca) and a
# non-root user. No protoc or other system package is needed to build (protox).
#
#   docker build -t idmatch .
#   docker run --rm -v "$PWD:/data" -w /data idmatch match --owner members.csv ...
#   docker run --rm -p 7443:7443 -v /etc/idmatch:/etc/idmatch:ro -v idmatch-state:/var/lib/idmatch \
#     idmatch serve --config /etc/idmatch/server.toml
# On Kubernetes: deploy/ (the server as a StatefulSet, shard clients as an Indexed Job).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Portable: curve25519-dalek picks its AVX-512/AVX2/serial backend at run time.
RUN cargo build --release --locked --bin idmatch \
    && install -D -m 0755 target/release/idmatch /out/idmatch

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/idmatch --create-home idmatch
COPY --from=build /out/idmatch /usr/local/bin/idmatch
USER idmatch
WORKDIR /var/lib/idmatch
EXPOSE 7443
ENTRYPOINT ["idmatch"]
CMD ["--help"]
