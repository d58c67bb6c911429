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
# GPU: NVIDIA publishes no Debian CUDA images, so both GPU stages use NVIDIA's Ubuntu 24.04 images
# (the builder the -devel one, for the CUDA toolkit LibTorch's CMake config needs; the runtime the
# -base one), whose gRPC 1.51, protobuf 3.21 and abseil 20220623 are the versions bookworm has; the
# same scripts/install-deps.sh installs the toolchain there. The CPU LibTorch is replaced by PyTorch
# 2.11.0 for CUDA 13.0, the version the H200 device check (scripts/device-check.sh) runs: its PyPI
# wheel and exactly the CUDA 13.0 library wheels it pins, each pinned by version and sha256 in
# deploy/docker/requirements-gpu.txt (pip in hash-checking mode). That download happens only here,
# at image build time; `make`, `make test` and the CPU image never fetch them. The wheels bundle
# the CUDA 13.0 runtime, cuBLAS, cuDNN and NCCL; the host needs an NVIDIA driver for CUDA 13.0
# (R580 or newer) and the NVIDIA container toolkit.
#
# Both images: non-root user 10001, `attnscore-server` (entrypoint, under tini) and the
# `attnscore` CLI, the example relative-position parameter set in /opt/attnscore/models, gRPC on
# 50051 and Prometheus metrics on 9090, and a HEALTHCHECK that asks `attnscore health` (on
# --health-listen when ATTNSCORE_HEALTH_LISTEN is set, as the TLS variants do) for the
# readiness service. Every server flag can be set with its ATTNSCORE_* environment variable
# (`attnscore-server --help` lists them); the image sets only what a container needs.

ARG DEBIAN_IMAGE=debian:bookworm
ARG DEBIAN_SLIM_IMAGE=debian:bookworm-slim
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:13.0.2-devel-ubuntu24.04

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
# GPU builder: install-deps.sh, then PyTorch's wheels (LibTorch and the CUDA libraries) into
# /opt/torch, then the Makefile's configure command with cmake/AttnscoreTorch.cmake pointed at that
# LibTorch (-DATTNSCORE_TORCH=python), then the Makefile's build. LibTorch's CMake config links
# libtorch_cuda with --no-as-needed itself (torch_cuda_library), so that CUDA registers its
# kernels although the server calls none of its symbols directly: no linker flags here.
FROM ${CUDA_DEVEL_IMAGE} AS gpu-builder
ARG JOBS=2
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /src
COPY scripts/install-deps.sh scripts/requirements.txt scripts/requirements-pypi.txt scripts/
RUN ./scripts/install-deps.sh
# torch 2.11.0 and its CUDA 13.0 libraries, each wheel checked against its sha256 (every line of
# the file has one, so pip refuses anything else). --no-deps: the Python-only dependencies are not
# in the file; --target also keeps pip away from Ubuntu's own Python (PEP 668). Then drop what
# only Python uses (the bindings, triton's ptxas, protoc): torch/lib, torch/include,
# torch/share/cmake and nvidia/ stay.
COPY deploy/docker/requirements-gpu.txt deploy/docker/
RUN python3 -m pip install --no-cache-dir --disable-pip-version-check --no-compile \
      --no-deps --require-hashes --only-binary :all: --target /opt/torch \
      -r deploy/docker/requirements-gpu.txt \
 && rm -rf /opt/torch/torch/lib/libtorch_python.so /opt/torch/torch/bin
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DATTNSCORE_TORCH=python -DATTNSCORE_TORCH_DIR=/opt/torch/torch/share/cmake/Torch \
      -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc "-DTORCH_CUDA_ARCH_LIST=8.0;9.0" \
      -DATTNSCORE_WERROR=OFF \
 && cmake --build build -j "${JOBS}" --target attnscore-server attnscore attnscore_example_models \
 && deploy/docker/runtime-packages.sh --exclude /opt/torch \
      build/server/attnscore-server build/client/attnscore >/tmp/runtime-packages.txt

# ---------------------------------------------------------------------------------------------
# GPU runtime: LibTorch's and the CUDA wheels' libraries at the paths they were built against
# (libtorch_cuda finds cuDNN, cuBLAS, NCCL, ... through its RPATH $ORIGIN/../../nvidia/*/lib), the
# distribution packages the binaries link (derived from the binaries above with ldd), the binaries.
FROM ${CUDA_IMAGE} AS gpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=gpu-builder /tmp/runtime-packages.txt /tmp/runtime-packages.txt
# hadolint ignore=DL3008
RUN apt-get update \
 && xargs -a /tmp/runtime-packages.txt apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
 && groupadd --system --gid 10001 attnscore \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin attnscore
COPY --from=gpu-builder /opt/torch/torch/lib/ /opt/torch/torch/lib/
COPY --from=gpu-builder /opt/torch/nvidia/ /opt/torch/nvidia/
# The binaries' RUNPATH names /opt/torch/torch/lib already; the loader cache is for other tools
# (ldd, debugging). Named to sort after x86_64-linux-gnu.conf: the wheel's own libgomp.so.1 must not
# shadow the distribution's for other programs.
RUN echo /opt/torch/torch/lib >/etc/ld.so.conf.d/zz-torch.conf && ldconfig
COPY --from=gpu-builder /src/build/server/attnscore-server /src/build/client/attnscore /usr/local/bin/
COPY --from=gpu-builder /src/build/examples/models/ /opt/attnscore/models/
LABEL org.opencontainers.image.title="attnscore" \
      org.opencontainers.image.description="Attention scoring gRPC service (NVIDIA GPU, PyTorch 2.11.0 for CUDA 13.0)"
# The CUDA 13.0 runtime comes with the wheels (and the base image): ask the container toolkit for
# a driver that runs CUDA 13.0 (R580 or newer).
ENV NVIDIA_REQUIRE_CUDA="cuda>=13.0" \
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
      libtorch1.13 libopenblas0-openmp libgomp1 \
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
