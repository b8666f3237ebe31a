# weft-controller image. Build from the repository root:
#   docker build -f deploy/docker/controller.Dockerfile -t weft/weft-controller:0.1.0 .
# Stable Rust (the workspace needs 1.91 or later).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Only the controller's crates: the eBPF programs and the proxy are not needed here.
# Under target/<host triple>/release (see .cargo/config.toml): copied to /out.
RUN cargo build --release --locked -p weft-controller --bin weft-controller \
    && mkdir /out \
    && cp target/"$(rustc --print host-tuple)"/release/weft-controller /out/

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/weft-controller /usr/local/bin/weft-controller
# Not root; the same uid the Deployment asks for.
USER 65532:65532
EXPOSE 15010 15014 15017
ENTRYPOINT ["/usr/local/bin/weft-controller"]
