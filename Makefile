# discd: `make run` installs what the build needs, builds, and runs the daemon in the foreground
# with its defaults (discd -n). Tests: make -f Makefile.test
SWIFT ?= swift
CONFIG ?= release
ARGS ?=

.PHONY: all deps build run install clean
all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(SWIFT) build -c $(CONFIG)

run: build
	.build/$(CONFIG)/discd -n $(ARGS)

install: build
	install -D -m 0755 .build/$(CONFIG)/discd $(DESTDIR)/usr/local/sbin/discd
	install -D -m 0755 .build/$(CONFIG)/showmap $(DESTDIR)/usr/local/bin/showmap

clean:
	rm -rf .build
