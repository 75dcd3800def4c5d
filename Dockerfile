# syntax=docker/dockerfile:1
# modelmux as a fully static musl binary in a FROM scratch image (the binary is about 3.2 MB;
# the image holds nothing else but a default config and an empty data folder: no shell, no
# libc, no CA bundle: rustls uses the bundled webpki roots).
#
#   docker build -t modelmux .
#   docker run --rm -p 3333:3333 -e OPENAI_API_KEY modelmux
#   docker run --rm -p 3333:3333 -e OPENAI_API_KEY --read-only \
#     -v "$PWD/config:/etc/modelmux:ro" -v modelmux-data:/var/lib/modelmux modelmux
#
# State: /var/lib/modelmux is the one writable place, a volume (the usage ledger goes there:
# `"usageLog": "/var/lib/modelmux/usage.jsonl"`, with its `.lock` and rotated files beside it).
# It is owned by 65532, so a new named volume mounted there starts out writable by the server;
# a host folder mounted there must be writable by uid 65532. Never point usageLog into
# /etc/modelmux: that is read-only here, and a ledger that cannot be opened stops the start.
#
# The config is read from /etc/modelmux/config.json and reloaded when the file changes. The image
# carries deploy/config.docker.json there (one OpenAI model, key from OPENAI_API_KEY), so the
# first line works with just a key; mount your own file over it (readable by uid 65532) for
# anything else. config.example.json is for `make run` only: its 127.0.0.1:3334 demo backend
# does not exist inside a container. `${VAR}` references are filled from the container
# environment. Same build as `make static` (scripts/static.sh): target <arch>-unknown-linux-musl,
# with musl-tools because ring compiles C. Only x86_64 has been verified; arm64 hosts build
# aarch64-unknown-linux-musl the same way.
#
# `--build-arg MODELMUX_BINARY=prebuilt` skips the Rust stage and takes ./modelmux from the
# build context instead (the binary `make static` made; the context must then hold it, an
# empty data/modelmux/ and deploy/config.docker.json): scripts/image.sh (`make image`) and
# scripts/image_test.sh build the image that way, with no registry needed since nothing is
# pulled for FROM scratch.
ARG MODELMUX_BINARY=build

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eux; \
    arch="$(uname -m)"; \
    export "CC_${arch}_unknown_linux_musl=musl-gcc"; \
    cargo build --release --locked --bin modelmux --target "${arch}-unknown-linux-musl"; \
    cp "target/${arch}-unknown-linux-musl/release/modelmux" /modelmux; \
    /modelmux --version; \
    mkdir -p /data/modelmux

FROM scratch AS prebuilt
COPY modelmux /modelmux
COPY data/ /data/

FROM ${MODELMUX_BINARY} AS binary

FROM scratch
COPY --from=binary --chmod=0555 /modelmux /modelmux
COPY --chmod=0444 deploy/config.docker.json /etc/modelmux/config.json
# The data folder, empty and owned by the server's user. /data holds just the empty
# `modelmux/`: copied once as root (so /var and /var/lib are root's), then again with --chown,
# which changes the copied folder only.
COPY --from=binary /data/ /var/lib/
COPY --from=binary --chown=65532:65532 /data/ /var/lib/
VOLUME ["/var/lib/modelmux"]
USER 65532:65532
EXPOSE 3333
ENV CM_OPEN_WEBUI_PROXY_CONFIG_FILE=/etc/modelmux/config.json
# No curl in a scratch image: the binary probes its own GET /health (port from
# CM_OPEN_WEBUI_PROXY_PORT, default 3333) and exits 0 or 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
  CMD ["/modelmux", "--healthcheck"]
ENTRYPOINT ["/modelmux"]
