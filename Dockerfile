# One image with every binary of the project: vfio-user-server, vfio-user-ctl,
# vfio-user-device-plugin, vfio-user-kubevirt-hook, vfio-user-operator (all in /usr/local/bin)
# and vfio-user-healthcheck. Manifests pick the binary with `command:`.
#
#   docker build -t ghcr.io/vfio-user/vfio-user-stack:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#
# Both stages run scripts that scripts/check-packaging.sh also runs (in a debootstrapped
# bookworm root), so they are verified without a container engine.

# ---- build: Debian bookworm with the build dependencies -------------------------------------
FROM debian:bookworm AS build
WORKDIR /src
# Dependencies first: this layer is reused until install-deps.sh changes.
COPY scripts/install-deps.sh scripts/docker-build-stage.sh scripts/
RUN scripts/docker-build-stage.sh deps && rm -rf /var/lib/apt/lists/*
COPY . .
RUN scripts/docker-build-stage.sh build --build-dir /build --dest /out

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
