# The two commands a fresh Debian bookworm machine needs: `make serve` and `make test`.
BUILD_DIR ?= build
JOBS ?= 2
CTEST_ARGS ?=
# The embedded default configuration plus the example relative parameter set the build writes,
# with gRPC reflection on for local tools (grpcurl); the server's default is off.
SERVE_ARGS ?= --model-dir $(BUILD_DIR)/examples/models --reflection

.PHONY: all deps configure build test lint serve bench bench-e2e device-dry-run torch2-check \
  format clean test-asan test-tsan fuzz

all: build

deps:
	./scripts/install-deps.sh

configure: deps
	@if [ ! -f $(BUILD_DIR)/build.ninja ]; then \
	  cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Release; \
	fi

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) $(CTEST_ARGS)

# lizard and clang-tidy (scripts/lint.sh); after the build, which generates the proto headers and
# compile_commands.json that clang-tidy reads.
lint: build
	BUILD_DIR=$(BUILD_DIR) JOBS=$(JOBS) ./scripts/lint.sh

# Sanitizer suites, each in a build directory of its own (docs/testing.md): ASan + UBSan over the
# unit and end-to-end suites, TSan over the batcher and the service (fake scorer).
test-asan: deps
	BUILD_DIR=build-asan JOBS=$(JOBS) ./tools/sanitizers/run_tests.sh asan

test-tsan: deps
	BUILD_DIR=build-tsan JOBS=$(JOBS) ./tools/sanitizers/run_tests.sh tsan

# libFuzzer targets (clang) in build-fuzz, each run from its seed corpus for FUZZ_SECONDS; a crash
# fails. FUZZ_SECONDS=300 for a longer run.
FUZZ_SECONDS ?= 30
fuzz: deps
	BUILD_DIR=build-fuzz JOBS=$(JOBS) FUZZ_SECONDS=$(FUZZ_SECONDS) ./fuzz/run.sh

serve: build
	$(BUILD_DIR)/server/attnscore-server $(SERVE_ARGS)

# The scoring benchmark (core vs literal port, sgemm rate), the transport benchmark (C++ client
# against a naive protobuf echo) and the end-to-end benchmark against
# ../shared/peer, in one run: writes bench/results/latest.json and latest.md and updates the
# README's table. `bench/compare.py OLD NEW` flags ratios that fell by more than 20%.
bench: build
	/usr/bin/python3 bench/report.py --scoring-bench $(BUILD_DIR)/bench/attnscore_bench_scoring \
	  --transport-bench $(BUILD_DIR)/bench/attnscore_bench_transport \
	  --update-readme README.md -- --server $(BUILD_DIR)/server/attnscore-server \
	  --cli $(BUILD_DIR)/client/attnscore --proto-root proto --peer ../shared/peer/peer_server.py

# The end-to-end benchmark alone (bench/e2e/bench_e2e.py).
bench-e2e: build
	/usr/bin/python3 bench/e2e/bench_e2e.py --server $(BUILD_DIR)/server/attnscore-server \
	  --cli $(BUILD_DIR)/client/attnscore --proto-root proto --peer ../shared/peer/peer_server.py

# The GPU machine's one command (scripts/device-check.sh) run on the CPU, the same way: Debian's
# packages unpacked into a prefix, a build directory of its own, no CUDA.
device-dry-run: deps
	./scripts/device-check.sh --fetch
	./scripts/device-check.sh --dry-run build-device-dry/report

# The whole test suite against LibTorch 2.11, the GPU machine's PyTorch (its CUDA build, the
# project's kernel included), on this CPU machine: scripts/torch2-check.sh. Needs the CUDA 13
# toolkit and PyPI (about 760 MB of pinned wheels, once); not part of `make test` or CI.
torch2-check: deps
	./scripts/torch2-check.sh

format:
	git ls-files '*.h' '*.cc' | xargs clang-format -i

clean:
	rm -rf $(BUILD_DIR)
