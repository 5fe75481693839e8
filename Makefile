# discd: `make run` installs what the build needs, builds, and runs the daemon in the foreground
# with its defaults (discd -n). Tests: make -f Makefile.test
#
# Release builds link the Swift standard library statically: the binary needs only glibc,
# libstdc++ and the system libraries it names (libsystemd, libibverbs), so cluster nodes need no
# Swift runtime, and the daemon's resident memory is lower (it touches only the runtime code it
# uses: 17.5 MB instead of 20.3 MB at N=16, docs/TESTING.md).
SWIFT ?= swift
CONFIG ?= release
ARGS ?=
STATIC = $(if $(filter release,$(CONFIG)),--static-swift-stdlib,)
BIN = $(shell $(SWIFT) build -c $(CONFIG) $(STATIC) --show-bin-path)

.PHONY: all deps build run install clean fuzz
all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(SWIFT) build -c $(CONFIG) $(STATIC)

run: build
	$(BIN)/discd -n $(ARGS)

install: build
	install -D -m 0755 $(BIN)/discd $(DESTDIR)/usr/local/sbin/discd
	install -D -m 0755 $(BIN)/showmap $(DESTDIR)/usr/local/bin/showmap

# Fuzzing, 10 minutes per libFuzzer target (FUZZ_SECONDS=N): tests/fuzz/run.py.
fuzz:
	$(MAKE) -f Makefile.test fuzz

clean:
	rm -rf .build .build-fuzz
