# BETaaS gateway firmware — the front door.
#   make qemu                 boot the firmware in QEMU with an emulated I2C sensor and a local broker
#   make test                 lint (fmt, clippy, shellcheck), unit tests, end-to-end tests under QEMU
#                             (the image built twice: the same bytes), fuzzers (installs what it needs)
#   make agent-arm            the static ARM agent
#   make vmd-arm              betaas-vmd for armhf, linked against Debian's armhf libvirt (out/sysroot-armhf)
#   make image BOARD=<board>  out/<board>/ (boards/: cubietruck, qemu-cubieboard, qemu-virt)
#   make bundle BOARD=<board> [VERSION=v]  signed RAUC update bundle out/<board>/betaas-<board>-<v>.raucb
#                             (VERSION defaults to `git describe`; keys: README, "Updates")
#   make bench                benchmarks (figures with their baselines)
#   make flash BOARD=<board> DEVICE=/dev/sdX [CONFIG=agent.toml] [PROVISION=dir]
#                             write out/<board>/sdcard.img to an SD card (betaas-flash), verify, provision
#   make deps                 install host packages, QEMU 10 and the Rust ARM target
#   make templates            out/templates/tiny-{x86_64,armhf} (the test VM template), booted under QEMU,
#                             out/templates/lgw-<arch> (logical gateway; LGW_ARCH="x86_64 armhf" for both)
#                             and out/templates/app-{x86_64,armhf} (OpenJDK + Tomcat; `make templates-app`)
#   make bigdata              out/templates/bigdata-{master,compute,storage}-x86_64 (Spark + Debian, offline)

BOARD ?= qemu-cubieboard
# On a machine without Rust, image/host-deps.sh (the $(STAMP) rule) installs rustup into ~/.cargo/bin:
# the recipes find cargo there in the same `make`, before a new login shell has it on PATH.
CARGO_BIN := $(or $(CARGO_HOME),$(HOME)/.cargo)/bin
ifeq ($(filter $(CARGO_BIN),$(subst :, ,$(PATH))),)
export PATH := $(CARGO_BIN):$(PATH)
endif
ARM_TARGET := armv7-unknown-linux-gnueabihf
AGENT_ARM := target/$(ARM_TARGET)/release/betaas-agent
STAMP := out/.deps-ok
# Architectures of the logical-gateway template `make templates` builds (x86_64 boots fastest under TCG).
LGW_ARCH ?= x86_64
# Architectures of the app template (OpenJDK 17 + Tomcat 10) `make templates-app` builds.
APP_ARCH ?= x86_64 armhf
# The end-to-end test binaries (tests/e2e/NAME.rs, each a [[test]] of betaas-e2e).
E2E_TESTS := $(sort $(basename $(notdir $(wildcard tests/e2e/*.rs))))
TINY_INPUTS := $(wildcard templates/tiny/*) templates/lib/initramfs.sh templates/lib/power-button.sh templates/lib/descriptor.sh

.PHONY: all deps agent-arm vmd-arm image bundle qemu test lint test-unit test-e2e e2e-rest test-reproducible fuzz bench clean templates lgw templates-app bigdata flash flash-tool

all: agent-arm

# Installs once per machine; delete out/.deps-ok (or run `make deps`) to check again.
$(STAMP): image/host-deps.sh
	@echo "==> checking host dependencies"
	bash image/host-deps.sh
	@mkdir -p out && touch $@

deps:
	bash image/host-deps.sh
	@mkdir -p out && touch $(STAMP)

agent-arm: $(STAMP)
	@echo "==> building the static ARM agent"
	cargo build --release --locked -p betaas-agent --target $(ARM_TARGET)
	@# (not `tee /dev/stderr`: reopening it truncates a log file that stdout and stderr share)
	@f=$$(file $(AGENT_ARM)); echo "$$f"; echo "$$f" | grep -q 'ARM, EABI5.*statically linked' \
	  || { echo "error: $(AGENT_ARM) is not a static ARM EABI5 binary" >&2; exit 1; }
	@echo "==> $(AGENT_ARM): $$(stat -c %s $(AGENT_ARM)) bytes (stripped)"

# Dynamic (libvirt cannot be linked statically), its own target dir: the agent's stays static.
vmd-arm: $(STAMP)
	@echo "==> building betaas-vmd for armhf against Debian's armhf libvirt"
	bash image/vmd-armhf.sh

# The images carry betaas-vmd (armhf, against their own libvirt) and the armhf tiny template;
# with virtualization (VIRT=1, the default) the armhf app template too (a no-op when up to date).
image: agent-arm flash-tool vmd-arm out/templates/tiny-armhf/template.toml
	@[ "$${VIRT:-1}" = 0 ] || $(MAKE) templates-app APP_ARCH=armhf
	@echo "==> building image for $(BOARD)"
	bash image/build.sh $(BOARD)

# A signed update bundle of the image's root filesystem (built first if missing), for `betaas-agent update`.
bundle: $(STAMP)
	@test -f out/$(BOARD)/staging/rootfs.ext4 || $(MAKE) image BOARD=$(BOARD)
	@echo "==> building the update bundle for $(BOARD)"
	bash image/bundle.sh $(BOARD)

# betaas-flash (flash/): the image's block map (debug build, shared with the tests) ...
flash-tool:
	@echo "==> building betaas-flash"
	cargo build --locked -p betaas-flash

# ... and writing a card (release build: it hashes every byte it writes and reads back).
# Asks before overwriting DEVICE; refuses system disks, mounted cards, cards smaller than the image.
flash:
	@test -n "$(DEVICE)" || { echo "usage: make flash BOARD=$(BOARD) DEVICE=/dev/sdX [CONFIG=agent.toml] [PROVISION=dir]" >&2; exit 2; }
	@test -f out/$(BOARD)/sdcard.img || $(MAKE) image BOARD=$(BOARD)
	@echo "==> writing out/$(BOARD)/sdcard.img to $(DEVICE)"
	cargo build --release --locked -p betaas-flash
	target/release/betaas-flash write --image out/$(BOARD)/sdcard.img --target $(DEVICE) \
	  $(if $(CONFIG),--config $(CONFIG)) $(if $(PROVISION),--provision $(PROVISION))

qemu: $(STAMP)
	$(MAKE) image BOARD=qemu-cubieboard
	cargo run --quiet --locked -p betaas-e2e --bin qemu-demo

# Formatting and clippy with warnings as errors (the workspace's lints: Cargo.toml), every target;
# shellcheck over the shell scripts (tests/shellcheck.sh: the file set, settings in .shellcheckrc).
lint: $(STAMP)
	@echo "==> cargo fmt --check, cargo clippy -D warnings, shellcheck"
	cargo fmt --all --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	bash tests/shellcheck.sh

# session.rs's outage tests (minutes of waiting for a broker) run beside the other binaries.
test-unit: $(STAMP)
	@echo "==> host unit tests"
	cargo test --locked --workspace --no-run
	bash tests/beside.sh session "cargo test --locked -p betaas-agent --test session -- outages::" \
	  cargo test --locked --no-fail-fast --workspace -- --skip outages::

test-e2e: $(STAMP)
	$(MAKE) vmd-arm
	# qemu-cubieboard (U-Boot, A/B updates, API, flash) as the lite image (VIRT=0): none of its tests
	# runs VMs, and its 96 MiB slots keep the update tests' downloads and writes short; qemu-virt and
	# cubietruck carry the local cloud. Built twice: the second build must give the same bytes.
	$(MAKE) test-reproducible
	cargo build --locked --workspace --bins
	cargo test --locked -p betaas-e2e --no-run
	# ab_update (five QEMU boots, installs and reboots of the lite image: about 20 minutes, mostly one
	# emulated CPU) runs beside the other images' builds and tests.
	bash tests/beside.sh ab_update "cargo test --locked -p betaas-e2e --test ab_update -- --ignored --test-threads=1 --nocapture" \
	  $(MAKE) --no-print-directory e2e-rest

# test-e2e without ab_update (and the images it needs).
e2e-rest: $(STAMP)
	$(MAKE) templates-app APP_ARCH=armhf
	$(MAKE) image BOARD=qemu-virt
	$(MAKE) image BOARD=cubietruck
	$(MAKE) out/templates/tiny-x86_64/template.toml
	$(MAKE) lgw LGW_ARCH=x86_64
	$(MAKE) templates-app APP_ARCH=x86_64
	$(MAKE) bigdata
	@echo "==> the tiny template boots, ticks and powers off (x86_64 and armhf, QEMU TCG)"
	cargo test --locked -p betaas-templates --test tiny_boot -- --ignored --test-threads=1 --nocapture
	@echo "==> end-to-end tests (QEMU + mosquitto; the agent and betaas-vmd binaries)"
	cargo test --locked --no-fail-fast -p betaas-e2e $(addprefix --test ,$(filter-out ab_update,$(E2E_TESTS))) \
	  -- --ignored --test-threads=1 --nocapture --skip nested_tcg --skip in_a_vm

# `make image` twice gives the same sdcard.img (lite qemu-cubieboard): the first build is out/qemu-cubieboard,
# the second goes to out/repro/ and is compared; both sha256s and build times are printed.
test-reproducible: agent-arm flash-tool vmd-arm out/templates/tiny-armhf/template.toml
	@echo "==> building the lite qemu-cubieboard image twice: the same bytes"
	VIRT=0 bash tests/reproducible.sh qemu-cubieboard

# Built from Debian packages only; the paper's templates (templates/*/build.sh) need internet.
templates: $(STAMP)
	@echo "==> building the tiny VM template (x86_64, armhf)"
	bash templates/tiny/build.sh x86_64
	bash templates/tiny/build.sh armhf
	@echo "==> booting it under QEMU: boot marker, ticks, ACPI shutdown"
	cargo test --locked -p betaas-templates --test tiny_boot -- --ignored --test-threads=1 --nocapture
	$(MAKE) lgw
	$(MAKE) templates-app

# The app template from Debian packages (each recipe prints its build time; skipped when its inputs
# did not change).
templates-app: $(STAMP)
	@for a in $(APP_ARCH); do \
	  echo "==> app template ($$a)"; \
	  bash templates/app/build.sh $$a || exit 1; \
	done

# Rebuilt only when its inputs change (make's dependencies).
out/templates/tiny-%/template.toml: $(TINY_INPUTS) | $(STAMP)
	@echo "==> building the tiny VM template ($*)"
	bash templates/tiny/build.sh $*

# The logical-gateway template: its recipe builds the static agent (cargo: a no-op when up to date)
# and skips the rest when the agent and the recipe's files did not change.
lgw: $(STAMP)
	@for a in $(LGW_ARCH); do \
	  echo "==> logical-gateway template ($$a)"; \
	  bash templates/lgw/build.sh $$a || exit 1; \
	done

# The big-data templates (Spark standalone from the pyspark sdist, Debian bookworm by mmdebstrap):
# skipped when their inputs did not change (inputs.sha256; FORCE=1 rebuilds).
bigdata: $(STAMP)
	@echo "==> big-data templates (x86_64)"
	bash templates/bigdata/build.sh x86_64

# The parsers that take outside input (journal records, MQTT payloads, commands), briefly.
fuzz: $(STAMP)
	bash agent/fuzz/run.sh

# Each stage's wall time is printed: CI has 90 minutes, make test should stay well under 50.
# lint first: it fails in about a minute where the tests take many.
test:
	@for s in lint test-unit test-e2e fuzz; do \
	  start=$$(date +%s); $(MAKE) --no-print-directory $$s || exit 1; \
	  echo "==> $$s took $$(( $$(date +%s) - start )) s"; \
	done

# Benchmarks print figures next to a baseline measured in the same run; they never fail on speed.
bench: $(STAMP)
	cargo bench --locked --workspace

clean:
	rm -rf out target
