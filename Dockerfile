# One image with every binary of the project: vfio-user-server, vfio-user-ctl,
# vfio-user-device-plugin, vfio-user-kubevirt-hook, vfio-user-operator (all in /usr/local/bin)
# and vfio-user-healthcheck. Manifests pick the binary with `command:`.
#
# The project publishes no image; build your own (docs/image.md):
#
#   scripts/build-image.sh [--tag REF] [--push DEST]     # buildah, as root, no registry needed
#   scripts/packaging/check-image.sh                      # checks the image just built
#
# or with Docker/Podman (base images from Docker Hub, no compiler cache):
#
#   docker build -t registry.example.com/vfio-user/vfio-user-stack:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#
# The steps of both stages live in scripts/docker-build-stage.sh and
# scripts/docker-runtime-stage.sh. scripts/build-image.sh mounts a compiler cache at /ccache
# (--volume, part of no layer); the build stage uses it when it is there.

# ---- deps: Debian bookworm with the build dependencies --------------------------------------
# Reused from the layer cache until install-deps.sh or docker-build-stage.sh changes.
FROM debian:bookworm AS deps
WORKDIR /src
COPY scripts/install-deps.sh scripts/docker-build-stage.sh scripts/
RUN scripts/docker-build-stage.sh deps && rm -rf /var/lib/apt/lists/*

# ---- build: the five binaries ----------------------------------------------------------------
FROM deps AS build
COPY . .
# /src/build, like the host's build/ under the checkout: ccache hashes paths relative to it.
RUN scripts/docker-build-stage.sh build --build-dir /src/build --dest /out

# ---- runtime: bookworm-slim with only the runtime libraries ----------------------------------
FROM debian:bookworm-slim AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
COPY scripts/docker-runtime-stage.sh scripts/packaging/runtime-packages.txt /tmp/packaging/
RUN /tmp/packaging/docker-runtime-stage.sh /tmp/packaging/runtime-packages.txt \
    && rm -rf /tmp/packaging
COPY --from=build /out/ /

LABEL org.opencontainers.image.title="vfio-user-stack" \
      org.opencontainers.image.description="vfio-user devices for KubeVirt: server, ctl, device plugin, KubeVirt hook, operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="debian:bookworm-slim" \
      org.opencontainers.image.documentation="docs/README.md"

# Unprivileged by default (operator, KubeVirt hook, vfio-user-ctl). The node DaemonSet runs
# the server and the device plugin as root in its securityContext: they chown the device
# sockets to qemu (107) and write into the kubelet's device-plugin directory.
USER 65532:65532
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/vfio-user-healthcheck"]
CMD ["vfio-user-server", "--help"]
