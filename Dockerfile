# syntax=docker/dockerfile:1
#
# attnscore container images. Needs BuildKit (the default builder since Docker 23), which builds
# only the stages the chosen target needs.
#
#   docker build -t attnscore:0.1.0-cpu .                   CPU image (the default target, `cpu`)
#   docker build --target gpu -t attnscore:0.1.0-gpu .      NVIDIA GPU image
#
# CPU: the builder is Debian bookworm running exactly what the README runs on a fresh machine,
# scripts/install-deps.sh and `make build` (Release, CMake + Ninja, build/); the runtime is
# bookworm-slim with only the shared libraries the binaries link (Debian's LibTorch, gRPC,
# protobuf, abseil, spdlog, fmt, prometheus-cpp) plus OpenBLAS, which Debian's LibTorch needs to be
# fast (without it LibTorch falls back to the reference BLAS).
#
# GPU: NVIDIA publishes no Debian CUDA images, so both GPU stages use NVIDIA's Ubuntu 24.04 image,
# whose gRPC 1.51, protobuf 3.21 and abseil 20220623 are the versions bookworm has; the same
# scripts/install-deps.sh installs the toolchain there. The CPU LibTorch is replaced by the CUDA
# LibTorch from download.pytorch.org, pinned by version and sha256 (LIBTORCH_* below). That
# download happens only here, at image build time; `make`, `make test` and the CPU image never
# fetch anything but Debian and PyPI packages. The archive bundles its CUDA runtime, cuBLAS and
# cuDNN; the host needs an NVIDIA driver for CUDA >= 11.8 and the NVIDIA container toolkit.
#
# Both images: non-root user 10001, `attnscore-server` (entrypoint, under tini) and the
# `attnscore` CLI, the example relative-position parameter set in /opt/attnscore/models, gRPC on
# 50051 and Prometheus metrics on 9090, and a HEALTHCHECK that asks `attnscore health` (on
# --health-listen when ATTNSCORE_HEALTH_LISTEN is set, as the TLS variants do) for the
# readiness service. Every server flag can be set with its ATTNSCORE_* environment variable
# (`attnscore-server --help` lists them); the image sets only what a container needs.

ARG DEBIAN_IMAGE=debian:bookworm
ARG DEBIAN_SLIM_IMAGE=debian:bookworm-slim
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-base-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# CPU builder: the README's two steps, nothing else.
FROM ${DEBIAN_IMAGE} AS builder
ARG JOBS=2
WORKDIR /src
# The dependency layer first, so that source edits do not reinstall the toolchain.
COPY scripts/install-deps.sh scripts/requirements.txt scripts/requirements-pypi.txt scripts/
RUN ./scripts/install-deps.sh
COPY . .
RUN make build JOBS="${JOBS}"

# ---------------------------------------------------------------------------------------------
# GPU builder: install-deps.sh, then the CUDA LibTorch, then the Makefile's configure command with
# LibTorch pointed at /opt/libtorch (its headers ahead of the distribution's, its libraries found
# first, libtorch_cuda linked so that CUDA registers itself), then the Makefile's build.
FROM ${CUDA_IMAGE} AS gpu-builder
# LibTorch 2.0.1 for CUDA 11.8, C++11 ABI. The checksum is the sha256 of the zip file itself
# (`sha256sum`); to change the version, download the new archive once, take its sha256sum and
# update all three arguments together.
ARG LIBTORCH_VERSION=2.0.1
ARG LIBTORCH_CUDA=cu118
ARG LIBTORCH_SHA256=843ad19e769a189758fd6a21bfced9024494b52344f4bc4fb75f75d36e6ea0c7
ARG JOBS=2
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /src
COPY scripts/install-deps.sh scripts/requirements.txt scripts/requirements-pypi.txt scripts/
RUN ./scripts/install-deps.sh
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl unzip \
 && rm -rf /var/lib/apt/lists/* \
 && curl -fsSL --retry 3 -o /tmp/libtorch.zip \
      "https://download.pytorch.org/libtorch/${LIBTORCH_CUDA}/libtorch-cxx11-abi-shared-with-deps-${LIBTORCH_VERSION}%2B${LIBTORCH_CUDA}.zip" \
 && echo "${LIBTORCH_SHA256}  /tmp/libtorch.zip" | sha256sum --check --strict \
 && unzip -q /tmp/libtorch.zip -d /opt \
 && rm /tmp/libtorch.zip \
 && rm -f /opt/libtorch/lib/*.a
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH=/opt/libtorch -DATTNSCORE_WERROR=OFF \
      "-DCMAKE_CXX_FLAGS=-isystem /opt/libtorch/include -isystem /opt/libtorch/include/torch/csrc/api/include" \
      "-DCMAKE_EXE_LINKER_FLAGS=-L/opt/libtorch/lib -Wl,--no-as-needed -ltorch_cuda -Wl,--as-needed -Wl,-rpath,/opt/libtorch/lib -Wl,-rpath-link,/opt/libtorch/lib" \
 && cmake --build build -j "${JOBS}" --target attnscore-server attnscore attnscore_example_models \
 && deploy/docker/runtime-packages.sh --exclude /opt/libtorch \
      build/server/attnscore-server build/client/attnscore >/tmp/runtime-packages.txt

# ---------------------------------------------------------------------------------------------
# GPU runtime: the CUDA LibTorch's libraries, the distribution packages the binaries link
# (derived from the binaries above with ldd), the binaries.
FROM ${CUDA_IMAGE} AS gpu
ARG LIBTORCH_VERSION=2.0.1
ARG LIBTORCH_CUDA=cu118
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=gpu-builder /tmp/runtime-packages.txt /tmp/runtime-packages.txt
# hadolint ignore=DL3008
RUN apt-get update \
 && xargs -a /tmp/runtime-packages.txt apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
 && groupadd --system --gid 10001 attnscore \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin attnscore
COPY --from=gpu-builder /opt/libtorch/lib/ /opt/libtorch/lib/
RUN echo /opt/libtorch/lib >/etc/ld.so.conf.d/libtorch.conf && ldconfig
COPY --from=gpu-builder /src/build/server/attnscore-server /src/build/client/attnscore /usr/local/bin/
COPY --from=gpu-builder /src/build/examples/models/ /opt/attnscore/models/
LABEL org.opencontainers.image.title="attnscore" \
      org.opencontainers.image.description="Attention scoring gRPC service (NVIDIA GPU, LibTorch ${LIBTORCH_VERSION}+${LIBTORCH_CUDA})"
# The CUDA runtime comes with LibTorch (11.8), not with the base image: ask the container toolkit
# for a driver that runs CUDA 11.8, not the base image's CUDA 12.6.
ENV NVIDIA_REQUIRE_CUDA="cuda>=11.8" \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    ATTNSCORE_LISTEN=0.0.0.0:50051 \
    ATTNSCORE_METRICS_LISTEN=0.0.0.0:9090 \
    ATTNSCORE_MODEL_DIR=/opt/attnscore/models \
    ATTNSCORE_DEVICE=cuda
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["/bin/sh", "-c", "addr=${ATTNSCORE_HEALTH_LISTEN:-$ATTNSCORE_LISTEN}; exec attnscore health --target \"127.0.0.1:${addr##*:}\" --service attnscore.v1.AttentionScorer --timeout 3s"]
ENTRYPOINT ["/usr/bin/tini", "--", "attnscore-server"]

# ---------------------------------------------------------------------------------------------
# CPU runtime, the default target (last stage). The package list is the binaries' direct
# shared-library dependencies (deploy/docker/runtime-packages.sh over the built binaries; a test
# checks it still covers them) plus libopenblas0-openmp and tini.
FROM ${DEBIAN_SLIM_IMAGE} AS cpu
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libtorch1.13 libopenblas0-openmp \
      libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623 \
      libspdlog1.10 libfmt9 libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libcivetweb1 \
      libssl3 tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 attnscore \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin attnscore
COPY --from=builder /src/build/server/attnscore-server /src/build/client/attnscore /usr/local/bin/
COPY --from=builder /src/build/examples/models/ /opt/attnscore/models/
LABEL org.opencontainers.image.title="attnscore" \
      org.opencontainers.image.description="Attention scoring gRPC service (CPU, Debian LibTorch 1.13)"
ENV ATTNSCORE_LISTEN=0.0.0.0:50051 \
    ATTNSCORE_METRICS_LISTEN=0.0.0.0:9090 \
    ATTNSCORE_MODEL_DIR=/opt/attnscore/models
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/bin/sh", "-c", "addr=${ATTNSCORE_HEALTH_LISTEN:-$ATTNSCORE_LISTEN}; exec attnscore health --target \"127.0.0.1:${addr##*:}\" --service attnscore.v1.AttentionScorer --timeout 3s"]
ENTRYPOINT ["/usr/bin/tini", "--", "attnscore-server"]
