# Build: the same script the test suite runs, so the image's flags are tested ones.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests/apisim ./tests/apisim
COPY scripts/build-release.sh ./scripts/
RUN scripts/build-release.sh

# Run: no shell, no package manager, a non-root user. OpenShift assigns its own UID.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/cip-webhook /usr/local/bin/cip-webhook
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/cip-webhook"]
CMD ["serve"]
