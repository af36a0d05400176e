# syntax=docker/dockerfile:1.7
#
# kratos-operator container image: a static release binary on distroless/static, running as the
# non-root user 65532. Build with
#
#   docker build -t kratos-operator:0.1.0 .
#
# The binary is the one the test suite runs on its node and the benchmark measures: a release
# build statically linked against glibc (-C target-feature=+crt-static), with glibc's allocator;
# `cargo xtask image` builds it the same way and packages it like this image. (musl's allocator
# is slow under many threads, and a musl build would be a binary nothing here tests.) The chart
# (charts/kratos-operator) runs the image with `run` and a read-only root filesystem.

# Base images by tag, not yet by digest: this repository was written where no registry could be
# reached to resolve one, and a digest nobody resolved is worse than none. Where one can be
# resolved, pin both as `name:tag@sha256:<digest>` (`docker buildx imagetools inspect
# <name:tag>` prints it); Dependabot's docker updates (.github/dependabot.yml) then keep the
# digest current, which it cannot do for a tag alone such as `nonroot`. It does not resolve
# ARGs in FROM, so the builder (on the crate's rust-version) is bumped by hand.
ARG RUST_VERSION=1.89
ARG DEBIAN_RELEASE=bookworm

# ---- build: the release binary, statically linked against glibc ----
FROM docker.io/library/rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# Only what the build needs (.dockerignore keeps the rest out): the workspace manifests, the lock
# file and the sources of the workspace members (cargo reads every member's manifest).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY testenv/Cargo.toml ./testenv/Cargo.toml
COPY testenv/src ./testenv/src
COPY xtask/Cargo.toml ./xtask/Cargo.toml
COPY xtask/src ./xtask/src
# With an explicit --target the static flag reaches only the binary's crates, not build scripts
# and proc macros. The registry and target caches survive between builds (BuildKit); the binary
# is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(rustc -vV | sed -n 's/^host: //p')" \
    && RUSTFLAGS="-C target-feature=+crt-static" \
       cargo build --release --locked --bin kratos-operator --target "$target" \
    && install -D -m 0755 "target/$target/release/kratos-operator" /out/kratos-operator \
    && /out/kratos-operator version

# ---- runtime: no shell, no package manager, non-root ----
FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="kratos-operator" \
      org.opencontainers.image.description="Kubernetes operator that manages Ory Kratos identities declaratively" \
      org.opencontainers.image.source="https://github.com/kratos-operator/kratos-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/kratos-operator /usr/local/bin/kratos-operator
# The nonroot user of distroless (uid/gid 65532); the chart's securityContext expects it.
USER 65532:65532
# /metrics, /healthz, /readyz
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/kratos-operator"]
CMD ["run"]
