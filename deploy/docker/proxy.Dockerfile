# The image injected into pods: weft-init (the init container, runs once as root with
# NET_ADMIN and NET_RAW) and weft-proxy (the native sidecar, uid 1337). One image for
# both, so a pod pulls one layer set and the two always match. Build from the root:
#   docker build -f deploy/docker/proxy.Dockerfile -t weft/weft-proxy:0.1.0 .
# Stable Rust (the workspace needs 1.91 or later).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Without the pinned nightly and bpf-linker, weft-ebpf builds without its programs:
# this image offers iptables mode (eBPF mode needs `cargo xtask build-ebpf` first).
# Static binaries (glibc, static-pie; see .cargo/config.toml), under
# target/<host triple>/release: copied to /out so the next stage needs no triple.
RUN cargo build --release --locked -p weft-proxy -p weft-init --bins \
    && mkdir /out \
    && cp target/"$(rustc --print host-tuple)"/release/weft-proxy \
          target/"$(rustc --print host-tuple)"/release/weft-init /out/

FROM debian:bookworm-slim
# weft-init drives iptables (nft and legacy back ends, ip6tables too).
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/weft-proxy /usr/local/bin/weft-proxy
COPY --from=build /out/weft-init /usr/local/bin/weft-init
# The injected containers set command (weft-init or weft-proxy) and their own
# securityContext (uid 0 with NET_ADMIN/NET_RAW for weft-init, 1337 for the proxy).
USER 1337:1337
EXPOSE 15001 15006 15008 15020
ENTRYPOINT []
CMD ["weft-proxy"]
