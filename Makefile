# The two commands a fresh Debian bookworm machine needs: `make serve` and `make test`.
BUILD_DIR ?= build
JOBS ?= 2
CTEST_ARGS ?=
# The embedded default configuration plus the example relative parameter set the build writes.
SERVE_ARGS ?= --model-dir $(BUILD_DIR)/examples/models

.PHONY: all deps configure build test lint serve bench format clean

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

serve: build
	$(BUILD_DIR)/server/attnscore-server $(SERVE_ARGS)

bench: build
	$(BUILD_DIR)/bench/attnscore_bench_scoring

format:
	git ls-files '*.h' '*.cc' | xargs clang-format -i

clean:
	rm -rf $(BUILD_DIR)
