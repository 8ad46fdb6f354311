# One Dockerfile for amd64 and arm64 (docker buildx build --platform linux/amd64,linux/arm64):
# the build stage runs on the builder's own platform and cross-compiles for TARGETARCH
# with the same script the test suite runs, so the image's flags are tested ones.
# Base images are pinned by digest (the tag says what, the digest which); refresh both
# together, e.g. with `crane digest rust:1.95-bookworm`.
FROM --platform=$BUILDPLATFORM docker.io/library/rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1 AS build
ARG TARGETARCH
WORKDIR /src
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The arm64 linker and target, only when cross-compiling for arm64. Versions come with the
# digest-pinned base's Debian release.
# hadolint ignore=DL3008
RUN if [ "$TARGETARCH" = arm64 ] && [ "$(uname -m)" != aarch64 ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
      && rm -rf /var/lib/apt/lists/* \
      && rustup target add aarch64-unknown-linux-gnu; \
    fi
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY benches ./benches
# The workspace: its test crates and targets must exist for cargo to read the manifest.
COPY tests ./tests
COPY scripts/build-release.sh ./scripts/
RUN scripts/build-release.sh | tail -1 | xargs -I{} cp {} /cip-webhook

# Run: no shell, no package manager, a non-root user. OpenShift assigns its own UID.
FROM gcr.io/distroless/static-debian12:nonroot@sha256:d093aa3e30dbadd3efe1310db061a14da60299baff8450a17fe0ccc514a16639
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="cip-webhook" \
      org.opencontainers.image.description="Admission webhook and MachineConfig renderer for OpenShift ClusterImagePolicy" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/cip-webhook/cip-webhook" \
      org.opencontainers.image.base.name="gcr.io/distroless/static-debian12:nonroot"
COPY --from=build /cip-webhook /usr/local/bin/cip-webhook
USER 65532:65532
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/cip-webhook"]
CMD ["serve"]
