# lunbridge: a user-space iSCSI initiator that serves LUNs as NBD devices.
#   make demo   - start a private iSCSI target and show lunbridge using a LUN on it
#   make test   - install what the tests need, then run unit and integration tests
SHELL := /bin/bash
SWIFT ?= swift
PREFIX ?= /usr/local
DESTDIR ?=
# Debian packages the build, the tests, the demo and the benchmarks use.
# Release builds: the Swift runtime linked in (no /opt/swift libraries needed at run time),
# and no run-time exclusivity checks in any module, SwiftNIO's included (swift_beginAccess
# and its thread-local access set were 3 % of the CPU per 4 KiB I/O; debug builds, which
# run the tests, keep them), optimized for size: -Osize took 0.4 MB off the code resident
# under the benchmark's load and did not cost CPU per I/O (4 KiB random read at depth 32,
# alternating: 23.4 and 21.8 µs against -O's 27.0 and 23.0).
RELEASE_FLAGS := -Xswiftc -enforce-exclusivity=unchecked -Xswiftc -Osize
# Every build made through this Makefile (CI's included) treats a warning in lunbridge's own
# code as an error (Package.swift reads the variable); `make WARNINGS_AS_ERRORS=0 ...` to relax.
WARNINGS_AS_ERRORS ?= 1
export LUNBRIDGE_WARNINGS_AS_ERRORS := $(WARNINGS_AS_ERRORS)
DEB_PACKAGES := libnl-3-dev libnl-genl-3-dev tgt libiscsi-bin qemu-utils qemu-block-extra fio libnbd-bin python3-libnbd procps iproute2 nftables openssl \
  man-db groff-base mandoc bash-completion zsh fish

.PHONY: all deps lint build buildinfo debug man test vm-test boot-test sanboot-test install-files multipath-test multipath-bench bench bench-failover bench-alua bench-initiators unit-test integration-test demo bench-codec fuzz fuzz-build fuzz-test install uninstall clean

all: build

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "make deps: run as root to install:$$missing" >&2; exit 1; fi; \
	  apt-get -o DPkg::Lock::Timeout=600 update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq $$missing >/dev/null; \
	fi
	@command -v $(SWIFT) >/dev/null || { echo "make deps: swift toolchain not found on PATH" >&2; exit 1; }
	@$(SWIFT) format --version >/dev/null 2>&1 || { echo "make deps: 'swift format' not found: install a Swift 6 toolchain (it ships swift-format)" >&2; exit 1; }
	@Tests/vm/vm-deps.sh

build: buildinfo
	$(SWIFT) build -c release --product lunbridge --static-swift-stdlib $(RELEASE_FLAGS)

debug: buildinfo
	$(SWIFT) build

# The commit `lunbridge --version` names (Sources/CBuildInfo includes .build/buildinfo.h);
# rewritten only when it changes, so an unchanged tree rebuilds nothing.
buildinfo:
	@mkdir -p .build; c=$$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown); \
	  git diff --quiet HEAD -- 2>/dev/null || c="$$c-modified"; \
	  line="#define LUNBRIDGE_COMMIT \"$$c\""; \
	  [ "$$(cat .build/buildinfo.h 2>/dev/null)" = "$$line" ] || echo "$$line" > .build/buildinfo.h

# Manual pages in .build/man: lunbridge(8) from the commands' own help (swift-argument-
# parser's generate-manual tool, built from the checked-out package) followed by the
# hand-written Sources/lunbridge/Manual/lunbridge.8.tail, and lunbridge.toml(5).
# MAN_BIN: the binary whose help is used (install uses the release build).
MAN_BIN ?= .build/debug/lunbridge
man:
	@[ -x "$(MAN_BIN)" ] || { echo "make man: $(MAN_BIN) is missing: build it first" >&2; exit 1; }
	@[ -d .build/checkouts/swift-argument-parser ] || $(SWIFT) package resolve
	$(SWIFT) build -q --package-path .build/checkouts/swift-argument-parser --scratch-path .build/manual-tool \
	  --product generate-manual
	@rm -rf .build/man; mkdir -p .build/man/generated
	.build/manual-tool/debug/generate-manual "$(MAN_BIN)" --section 8 \
	  --date "$$(git log -1 --format=%cs 2>/dev/null || date +%F)" -o .build/man/generated
	@# Without the hidden systemd-generator and initramfs-files commands and the generated one-line EXIT STATUS
	@# (the tail has the real one).
	awk '/^\.It Em (systemd-generator|initramfs-files)$$/ { skip = 1 } skip && /^\.El$$/ { skip = 0; next } skip { next } \
	  /^\.Sh "EXIT STATUS"$$/ { exit } { print }' .build/man/generated/lunbridge.8 > .build/man/lunbridge.8
	cat Sources/lunbridge/Manual/lunbridge.8.tail >> .build/man/lunbridge.8
	cp Sources/lunbridge/Manual/lunbridge.toml.5 .build/man/

# Integration tests start their own tgtd on loopback ports; they need root (CI is root).
test: deps buildinfo
	@[ "$$(id -u)" = 0 ] || { echo "make test: the integration tests drive tgtd and need root" >&2; exit 1; }
	$(SWIFT) build --build-tests
	@$(MAKE) --no-print-directory man MAN_BIN=.build/debug/lunbridge
	@set -o pipefail; $(SWIFT) test --skip-build --disable-swift-testing 2>&1 | tee .build/test.log \
	  | grep -v -E '^[0-9T:+-]+ (debug|info|notice|warning|error) lunbridge'; rc=$$?; \
	  $(MAKE) --no-print-directory vm-test || rc=1; \
	  $(MAKE) --no-print-directory boot-test || rc=1; \
	  $(MAKE) --no-print-directory sanboot-test || rc=1; \
	  $(MAKE) --no-print-directory multipath-test || rc=1; \
	  $(MAKE) --no-print-directory fuzz-test || rc=1; \
	  $(MAKE) --no-print-directory lint || rc=1; \
	  Tests/scripts/test-summary.sh .build/test.log .build/vm-test/stdout .build/boot-test/stdout .build/sanboot-test/stdout \
	    .build/multipath-test/stdout .build/fuzz-test/stdout .build/lint/stdout || rc=1; exit $$rc

# swift-format (in the Swift 6 toolchain) over the sources, tests and manifest with the
# project's .swift-format; every finding fails. `swift format format -i FILE` fixes most.
lint:
	@rm -rf .build/lint; mkdir -p .build/lint
	@$(SWIFT) format lint --strict --recursive Sources Tests Package.swift > .build/lint/findings 2>&1; rc=$$?; \
	  cat .build/lint/findings; n=$$(grep -c -E ': (error|warning): ' .build/lint/findings); \
	  [ $$rc -eq 0 ] || [ $$n -gt 0 ] || n=1; \
	  if [ $$n -eq 0 ]; then echo "lint checks: 1 passed, 0 failed"; \
	  else echo "lint checks: 0 passed, $$n failed (swift format lint --strict: fix each, or swift format format -i FILE)"; \
	  fi | tee .build/lint/stdout; [ $$n -eq 0 ]

# The kernel path in a real Debian kernel under QEMU (this machine's kernel has no nbd).
vm-test: deps
	$(SWIFT) build --product lunbridge
	@rm -rf .build/vm-test; mkdir -p .build/vm-test
	RESULTDIR=.build/vm-test VM_QUIET=1 VM_TIMEOUT=1200 Tests/vm/vm-run.sh Tests/vm/guest-attach.sh \
	  "$$(pwd)/.build/debug/lunbridge" "$$(pwd)"

# Multipath faults (link down, black hole, connection deleted, tgtd stopped, all paths
# down) while fio verifies through `lunbridge serve`, over two veth NICs between network
# namespaces; needs root. Output in .build/multipath-test/ (stdout, logs, stalls.tsv).
multipath-test: deps buildinfo
	@[ "$$(id -u)" = 0 ] || { echo "make multipath-test: network namespaces and tgtd need root" >&2; exit 1; }
	$(SWIFT) build --product lunbridge
	@rm -rf .build/multipath-test; mkdir -p .build/multipath-test
	@set -o pipefail; Tests/multipath/faults.sh .build/debug/lunbridge .build/multipath-test \
	  | tee .build/multipath-test/stdout

# lunbridge@NAME, its udev rule and an fstab line in two real boots with systemd as PID 1
# (Tests/vm/boot/README.md); about 5-10 minutes under emulation.
boot-test: deps
	$(SWIFT) build --product lunbridge
	@rm -rf .build/boot-test; mkdir -p .build/boot-test
	Tests/vm/boot/boot-test.sh "$$(pwd)/.build/debug/lunbridge" .build/boot-test

# Boot from SAN (Tests/vm/sanboot/README.md): a guest with no disk whose root filesystem is
# a LUN attached by the initramfs that update-initramfs built with lunbridge's hook, in a
# Debian root made by debootstrap (cached in .build/sanboot-cache); two boots under QEMU,
# about 10 minutes.
sanboot-test: deps
	$(SWIFT) build --product lunbridge
	@rm -rf .build/sanboot-test; mkdir -p .build/sanboot-test
	Tests/vm/sanboot/sanboot-test.sh "$$(pwd)/.build/debug/lunbridge" .build/sanboot-test

# Fuzzing every decoder of peer bytes (Tests/fuzz): libFuzzer + AddressSanitizer, from
# the committed seed corpus. `make fuzz` runs each target FUZZ_SECONDS (default 300);
# `make test` runs each for 15 s. New inputs and crashes stay under .build/.
FUZZ_SECONDS ?= 300
fuzz-build:
	$(SWIFT) build --product lunbridge-fuzz --scratch-path .build/fuzz \
	  -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING

fuzz: fuzz-build
	@mkdir -p .build/fuzz-run
	Tests/fuzz/run.sh .build/fuzz/debug/lunbridge-fuzz $(FUZZ_SECONDS) .build/fuzz-run

fuzz-test: fuzz-build
	@rm -rf .build/fuzz-test; mkdir -p .build/fuzz-test
	@set -o pipefail; Tests/fuzz/run.sh .build/fuzz/debug/lunbridge-fuzz 15 .build/fuzz-test \
	  | tee .build/fuzz-test/stdout

unit-test:
	$(SWIFT) test --skip IntegrationTests

integration-test: deps
	$(SWIFT) test --filter IntegrationTests

# Discovery and info on this machine; the kernel part (attach, mkfs, mount) here when the
# running kernel has an nbd driver, otherwise inside the VM (and it says so).
demo: deps build
	@Tests/scripts/demo.sh .build/release/lunbridge
	@if modprobe nbd 2>/dev/null && [ -e /sys/module/nbd ]; then \
	  Tests/vm/guest-demo.sh .build/release/lunbridge "$$(pwd)"; \
	else \
	  echo; echo "This kernel has no nbd driver: running the attach part inside a Debian kernel under QEMU (about a minute)..."; \
	  rm -rf .build/demo-vm; mkdir -p .build/demo-vm; \
	  RESULTDIR=.build/demo-vm Tests/vm/vm-run.sh Tests/vm/guest-demo.sh \
	    "$$(pwd)/.build/release/lunbridge" "$$(pwd)"; \
	fi

# fio through `lunbridge serve` vs qemu-nbd (libiscsi) on one tgtd LUN in one run, with
# iscsi-perf as the no-NBD ceiling; medians and ratios in .build/bench/bench.md.
bench: deps build
	Tests/bench/bench.sh .build/release/lunbridge .build/bench
	Tests/bench/multipath-bench.sh .build/release/lunbridge .build/bench-multipath
	@dpkg-query -W -f='$${Status}' open-iscsi 2>/dev/null | grep -q "install ok installed" || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq open-iscsi >/dev/null
	Tests/bench/vm-bench.sh "$$(pwd)/.build/release/lunbridge" "$$(pwd)/.build/bench-vm"
	@$(MAKE) --no-print-directory bench-failover
	@$(MAKE) --no-print-directory bench-alua

# Two paths vs one under a 200 Mbit/s tbf per NIC, and the failover stall distribution
# (network namespaces, needs root); report in .build/bench-multipath/multipath-bench.md.
multipath-bench: deps build
	Tests/bench/multipath-bench.sh .build/release/lunbridge .build/bench-multipath

# Failover stall in the VM: lunbridge attach vs open-iscsi + dm-multipath (their defaults),
# link-down / black hole / tcp reset of one of two paths while fio writes; about 19 min.
# Report in .build/bench-failover/vm-failover.md. open-iscsi and multipath-tools are
# installed here only (not in DEB_PACKAGES): the guest runs this host's binaries. The
# install enables multipathd on this host (and in every --systemd VM, which boots this
# host's units): that is undone, the bench starts its own multipathd in the guest.
bench-failover: deps build bench-initiators
	Tests/bench/vm-failover.sh "$$(pwd)/.build/release/lunbridge" "$$(pwd)/.build/bench-failover"

# ALUA moves in the VM: lunbridge attach vs open-iscsi + dm-multipath (scsi_dh_alua, their
# defaults) on a LIO LUN whose two port groups are swapped, made unavailable, transitioning
# and both standby during fio; about 6 min. Report in .build/bench-alua/vm-alua.md.
bench-alua: deps build bench-initiators
	Tests/bench/vm-alua.sh "$$(pwd)/.build/release/lunbridge" "$$(pwd)/.build/bench-alua"

bench-initiators:
	@missing=""; for p in open-iscsi multipath-tools; do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; [ -z "$$missing" ] || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null && \
	  case "$$missing" in *multipath-tools*) systemctl disable -q multipathd.service multipathd.socket 2>/dev/null || true ;; esac; }

bench-codec:
	$(SWIFT) run -c release lunbridge-codec-bench

# `make install` builds and installs the release build (Swift runtime linked statically);
# install-files installs INSTALL_BIN as it is (the boot-from-SAN test puts the debug build
# into its guest's root filesystem with DESTDIR).
INSTALL_BIN ?= .build/release/lunbridge
install: build
	@$(MAKE) --no-print-directory install-files

install-files:
	@$(MAKE) --no-print-directory man MAN_BIN=$(INSTALL_BIN)
	install -D -m 0755 $(INSTALL_BIN) $(DESTDIR)$(PREFIX)/bin/lunbridge
	install -D -m 0644 .build/man/lunbridge.8 $(DESTDIR)$(PREFIX)/share/man/man8/lunbridge.8
	install -D -m 0644 .build/man/lunbridge.toml.5 $(DESTDIR)$(PREFIX)/share/man/man5/lunbridge.toml.5
	@# The unit runs the binary where PREFIX put it.
	sed -e 's|/usr/local/bin/lunbridge|$(PREFIX)/bin/lunbridge|g' -e 's|PREFIX/|$(PREFIX)/|g' systemd/lunbridge@.service > .build/lunbridge@.service
	install -D -m 0644 .build/lunbridge@.service $(DESTDIR)/etc/systemd/system/lunbridge@.service
	install -D -m 0644 systemd/lunbridge-device-timeout.conf \
	  $(DESTDIR)/etc/systemd/system/dev-lunbridge-.device.d/40-lunbridge.conf
	install -D -m 0644 systemd/99-lunbridge.rules $(DESTDIR)/etc/udev/rules.d/99-lunbridge.rules
	install -D -m 0644 systemd/lunbridge-modules.conf $(DESTDIR)/etc/modules-load.d/lunbridge.conf
	install -D -m 0600 systemd/example.toml $(DESTDIR)/etc/lunbridge/volumes/example.toml.sample
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/lunbridge/README.md
	install -D -m 0644 systemd/credentials.conf.example $(DESTDIR)$(PREFIX)/share/doc/lunbridge/credentials.conf.example
	@# Boot from SAN: initramfs-tools hook, local-top script and settings (UMASK=0077).
	sed -e 's|^LUNBRIDGE=/usr/local/bin/lunbridge|LUNBRIDGE=$(PREFIX)/bin/lunbridge|' systemd/initramfs-tools/hooks/lunbridge > .build/initramfs-hook
	install -D -m 0755 .build/initramfs-hook $(DESTDIR)/etc/initramfs-tools/hooks/lunbridge
	install -D -m 0755 systemd/initramfs-tools/scripts/local-top/lunbridge $(DESTDIR)/etc/initramfs-tools/scripts/local-top/lunbridge
	install -D -m 0644 systemd/initramfs-tools/conf.d/lunbridge $(DESTDIR)/etc/initramfs-tools/conf.d/lunbridge
	@# The generator that starts lunbridge@NAME at boot for volumes with startup = "automatic".
	install -d $(DESTDIR)$(PREFIX)/lib/systemd/system-generators
	ln -sf $(PREFIX)/bin/lunbridge $(DESTDIR)$(PREFIX)/lib/systemd/system-generators/lunbridge-generator
	@# Shell completion, generated by the argument parser from the commands themselves.
	install -d $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions \
	  $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	$(INSTALL_BIN) --generate-completion-script bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/lunbridge
	$(INSTALL_BIN) --generate-completion-script zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_lunbridge
	$(INSTALL_BIN) --generate-completion-script fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/lunbridge.fish
	-[ -n "$(DESTDIR)" ] || { systemctl daemon-reload 2>/dev/null; udevadm control --reload 2>/dev/null; }; true

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/lunbridge $(DESTDIR)/etc/systemd/system/lunbridge@.service \
	  $(DESTDIR)/etc/systemd/system/dev-lunbridge-.device.d/40-lunbridge.conf \
	  $(DESTDIR)/etc/udev/rules.d/99-lunbridge.rules $(DESTDIR)/etc/modules-load.d/lunbridge.conf \
	  $(DESTDIR)/etc/lunbridge/volumes/example.toml.sample
	-rmdir $(DESTDIR)/etc/systemd/system/dev-lunbridge-.device.d 2>/dev/null
	rm -rf $(DESTDIR)$(PREFIX)/share/doc/lunbridge
	rm -f $(DESTDIR)$(PREFIX)/share/man/man8/lunbridge.8 $(DESTDIR)$(PREFIX)/share/man/man5/lunbridge.toml.5
	rm -f $(DESTDIR)$(PREFIX)/lib/systemd/system-generators/lunbridge-generator
	rm -f $(DESTDIR)/etc/initramfs-tools/hooks/lunbridge $(DESTDIR)/etc/initramfs-tools/scripts/local-top/lunbridge \
	  $(DESTDIR)/etc/initramfs-tools/conf.d/lunbridge
	rm -f $(DESTDIR)$(PREFIX)/share/bash-completion/completions/lunbridge \
	  $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_lunbridge $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/lunbridge.fish

clean:
	rm -rf .build
