# kore_workflow: `make demo` runs the example import against the bundled
# emulator; `make test` runs luacheck and the busted specs, then the specs
# again under AddressSanitizer and UndefinedBehaviorSanitizer and under
# valgrind, then a short run of each fuzz target. Both install the Debian
# packages they need first (as root) and build the C core.

LUA ?= lua5.4
LUA_VERSION ?= 5.4
BUILD ?= build

# Seconds per fuzz target: fuzz-short runs inside `make test`, fuzz-long by hand.
FUZZ_SHORT_SECONDS ?= 25
FUZZ_LONG_SECONDS ?= 600

.PHONY: all build deps deps-demo demo test lint specs test-luas test-asan test-valgrind \
	test-memcheck fuzz-short fuzz-long clean

all: build

deps:
	scripts/install-deps test

deps-demo:
	scripts/install-deps demo

$(BUILD)/kore_workflow/core.so: CMakeLists.txt csrc/*.c csrc/*.h
	cmake -S . -B $(BUILD) -DKW_LUA=$(LUA_VERSION) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(BUILD)

build: $(BUILD)/kore_workflow/core.so

demo: deps-demo
	$(MAKE) --no-print-directory build
	scripts/demo

lint:
	luacheck --no-color -q lua spec bin/kore-workflow.lua

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

clean:
	rm -rf $(BUILD) build-asan build-valgrind build-memcheck build-fuzz build-fuzz-long-* \
		build-5.1 build-5.2 build-5.3 build-luajit build-luas
