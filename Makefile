# kubevirt-rs. The quick start is `make demo` and `make test`; see README.md.
#
# Test guests are built from Debian packages into the cache
# ($KUBEVIRT_RS_CACHE, default ~/.cache/kubevirt-rs; see guest/README.md).

CARGO ?= cargo
RELEASE := target/release

.PHONY: all deps build server guest guest-full registry images demo demo-launcher test test-unit test-security lint crds bench clean

all: build

deps:
	scripts/install-deps.sh

build: deps
	$(CARGO) build --release --bins
	ln -sf virtctl $(RELEASE)/kubectl-virt

# The all-in-one server; the admin kubeconfig is DIR/kubeconfig.
server: images
	$(RELEASE)/kubevirt-rs server --data-dir $${KUBEVIRT_RS_DATA_DIR:-$$HOME/.local/share/kubevirt-rs}

# Tiny guest disk, kernel, initramfs and their OCI layouts.
guest: deps
	guest/build.sh

# Full Debian guest (cloud-init, qemu-guest-agent, sshd) and its containerDisk layout.
guest-full: guest
	guest/build-full.sh

# A registry on 127.0.0.1:5000 serving the guests (the full one only once built), and the
# node's mirror configuration.
registry: guest
	guest/registry.sh

# The launcher image (kubevirt-rs/virt-launcher:<version>, from this machine's Debian
# files and the release launcher), pushed to the local registry with the guests.
images: build guest
	images/build.sh launcher $(RELEASE)/virt-launcher
	images/build.sh toolbox
	guest/registry.sh

# Starts the all-in-one server on a scratch directory, applies the demo VM, starts it with
# virtctl and shows its console until the guest powers off; then stops everything. The
# server runs launcher pods in runc from the launcher image, so that image comes first.
demo: images
	RELEASE=$(RELEASE) scripts/demo.sh

# The standalone launcher alone: boots the demo VMI in the foreground, console on stdout.
demo-launcher: build registry
	$(RELEASE)/virt-launcher run --vmi examples/demo-vmi.yaml

# Everything CI runs: unit tests, then real QEMU guests under TCG (the full Debian guest
# takes a few minutes to build once, then stays in the cache). The server tests build the
# launcher image from the debug launcher and push it themselves.
test: deps guest guest-full registry
	$(CARGO) test --workspace --all-targets
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test-unit:
	$(CARGO) test --workspace --lib

# The attacks a namespace user could try, each made for real (docs/security.md); also
# part of `make test`.
test-security: deps guest registry
	$(CARGO) build --bins
	$(CARGO) test -p server --test server -- security:: browser:: migration:: \
		lifecycle::down_stops cli::a_component_that
	$(CARGO) test -p virt-api --test it -- only_the_api_server
	$(CARGO) test -p apiserver --test bad_input
	$(CARGO) test -p podrunner --test it -- sandbox::
	$(CARGO) test -p launcher-proto -- rundir

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Regenerates deploy/crds/ from the API types.
crds:
	$(CARGO) run -q -p api --bin crdgen deploy/crds

bench: images
	scripts/bench.sh

clean:
	$(CARGO) clean
