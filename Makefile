# kore_workflow: `make demo` runs the example import against the bundled
# emulator; `make test` runs luacheck and the busted specs. Both install the
# Debian packages they need first (as root) and build the C core.

LUA ?= lua5.4
LUA_VERSION ?= 5.4
BUILD ?= build

.PHONY: all build deps deps-demo demo test lint specs clean

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

test: deps
	$(MAKE) --no-print-directory build
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory specs

clean:
	rm -rf $(BUILD)
