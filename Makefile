# kore_workflow: `make demo` runs the example import against the bundled
# emulator; `make test` runs luacheck and the busted specs, then the specs
# again under AddressSanitizer and UndefinedBehaviorSanitizer and under
# valgrind, then a short run of each fuzz target. Both install the Debian
# packages they need first (as root) and build the C core.

LUA ?= lua5.4
LUA_VERSION ?= 5.4
BUILD ?= build

# make bench: the contenders' Lua, the core built for it, and extra arguments
# for bench/run.lua (such as --quick or --repeat 3).
BENCH_LUA ?= lua5.1
BENCH_LUA_VERSION ?= 5.1
BENCH_BUILD ?= build-bench
BENCH_ARGS ?=

# Seconds per fuzz target: fuzz-short runs inside `make test`, fuzz-long by hand.
FUZZ_SHORT_SECONDS ?= 25
FUZZ_LONG_SECONDS ?= 600

.PHONY: all build deps deps-demo deps-bench demo test lint specs test-luas test-asan \
	test-valgrind test-memcheck fuzz-short fuzz-long bench bench-tools clean

all: build

deps:
	scripts/install-deps test

deps-demo:
	scripts/install-deps demo

deps-bench:
	scripts/install-deps bench

$(BUILD)/kore_workflow/core.so: CMakeLists.txt csrc/*.c csrc/*.h
	cmake -S . -B $(BUILD) -DKW_LUA=$(LUA_VERSION) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(BUILD)

build: $(BUILD)/kore_workflow/core.so

demo: deps-demo
	$(MAKE) --no-print-directory build
	scripts/demo

lint:
	luacheck --no-color -q lua spec bench bin/kore-workflow.lua

specs:
	scripts/run-specs $(LUA)

test-luas:
	scripts/test-luas

test-asan:
	scripts/test-asan $(LUA) $(LUA_VERSION)

test-valgrind: build
	scripts/test-valgrind $(LUA) $(BUILD)

# test-asan and test-valgrind at once.
test-memcheck: build
	scripts/test-memcheck $(LUA) $(LUA_VERSION) $(BUILD)

fuzz-short:
	LUA_VERSION=$(LUA_VERSION) scripts/fuzz $(FUZZ_SHORT_SECONDS)

fuzz-long:
	LUA_VERSION=$(LUA_VERSION) scripts/fuzz $(FUZZ_LONG_SECONDS)

test: deps
	$(MAKE) --no-print-directory build
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory specs
	$(MAKE) --no-print-directory test-luas
	$(MAKE) --no-print-directory test-memcheck
	$(MAKE) --no-print-directory fuzz-short

# The benchmarks (see BENCHMARKS.md); not part of `make test`.
# flock keeps two bench runs (or a run and the bench spec) from measuring at once.
bench: deps-bench
	$(MAKE) --no-print-directory bench-tools
	flock $(BENCH_BUILD)/bench.lock $(LUA) bench/run.lua --lua $(BENCH_LUA) --core $(BENCH_BUILD) \
		--tools $(BENCH_BUILD)/tools --out $(BENCH_BUILD)/latest.md $(BENCH_ARGS)

bench-tools:
	cmake -S . -B $(BENCH_BUILD) -DKW_LUA=$(BENCH_LUA_VERSION) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(BENCH_BUILD) -- --no-print-directory >/dev/null
	mkdir -p $(BENCH_BUILD)/tools
	$(CC) -O2 -Wall -Wextra -Werror -o $(BENCH_BUILD)/tools/measure bench/measure.c
	$(CC) -O2 -Wall -Wextra -Werror -o $(BENCH_BUILD)/tools/libcurl_status \
		bench/contenders/libcurl_status.c $$(pkg-config --cflags --libs libcurl json-c)

clean:
	rm -rf $(BUILD) $(BENCH_BUILD) build-asan build-valgrind build-memcheck build-fuzz build-fuzz-long-* \
		build-5.1 build-5.2 build-5.3 build-luajit build-luas
