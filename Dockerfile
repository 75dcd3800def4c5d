# syntax=docker/dockerfile:1
# modelmux as a fully static musl binary in a FROM scratch image (the binary is ~2.4 MB; the
# image holds nothing else but a default config: no shell, no libc, no CA bundle: rustls uses the
# bundled webpki roots).
#
#   docker build -t modelmux .
#   docker run --rm -p 3333:3333 -e OPENAI_API_KEY modelmux
#   docker run --rm -p 3333:3333 -e OPENAI_API_KEY \
#     -v "$PWD/config.json:/etc/modelmux/config.json:ro" modelmux
#
# The config is read from /etc/modelmux/config.json and reloaded when the file changes. The image
# carries deploy/config.docker.json there (one OpenAI model, key from OPENAI_API_KEY), so the
# first line works with just a key; mount your own file over it (readable by uid 65532) for
# anything else. config.example.json is for `make run` only: its 127.0.0.1:3334 demo backend
# does not exist inside a container. `${VAR}` references are filled from the container
# environment. Same build as `make static` (scripts/static.sh): target <arch>-unknown-linux-musl,
# with musl-tools because ring compiles C. Only x86_64 has been verified; arm64 hosts build
# aarch64-unknown-linux-musl the same way.

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
    /modelmux --version

FROM scratch
COPY --from=build /modelmux /modelmux
COPY --chmod=0444 deploy/config.docker.json /etc/modelmux/config.json
USER 65532:65532
EXPOSE 3333
ENV CM_OPEN_WEBUI_PROXY_CONFIG_FILE=/etc/modelmux/config.json
# No curl in a scratch image: the binary probes its own GET /health (port from
# CM_OPEN_WEBUI_PROXY_PORT, default 3333) and exits 0 or 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
  CMD ["/modelmux", "--healthcheck"]
ENTRYPOINT ["/modelmux"]
