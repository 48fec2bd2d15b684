# Two set-up commands: `make run` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Debian packages the tests use (root on the test machines; skipped if already present).
APT_PACKAGES := iproute2 iptables coturn redis-server chromium shellcheck debootstrap tini apparmor \
	buildah podman runc

# The native backend (libdatachannel-py, Python >= 3.12 on x86_64/aarch64; requirements*.lock
# pin it with that marker): `make test-native` runs the end-to-end suites with every daemon,
# native client and raw peer on it (PEERPROXYD_TEST_BACKEND=native) in a second venv, when
# such a Python is found (python3.13, python3.12 or pyenv's); `make test` runs it after the
# main suite.
PYTHON_NATIVE ?= $(shell for p in python3.13 python3.12 $$HOME/.pyenv/versions/3.13*/bin/python3 \
	$$HOME/.pyenv/versions/3.12*/bin/python3; do $$p -c 'import sys; assert sys.version_info >= (3, 12)' \
	>/dev/null 2>&1 && echo $$p && break; done)
VENV_NATIVE ?= .venv313
NATIVE_TESTS := tests/rtc/test_transport.py tests/test_native_end_to_end.py \
	tests/test_end_to_end.py tests/test_browser.py tests/test_browser_trust.py \
	tests/trust/test_trust.py tests/test_limits.py tests/test_websocket.py \
	tests/test_browser_websocket.py tests/device/test_metrics.py \
	tests/appliance/test_mdns.py::test_chromium_with_local_names_reaches_a_native_device \
	tests/test_nat.py::test_lan_viewer_connects_host_to_host tests/test_footprint.py
NATIVE_MARKER := python_version >= "3.12" and (platform_machine == "x86_64" or platform_machine == "aarch64")

# Real third-party apps (Home Assistant, a camera stream, Node-RED, Syncthing, ...) through the
# browser client: each tests/apps/setup_<app>.sh installs one, pinned, into .apps/<app>/
# (idempotent); `make test-apps` runs them, then tests/apps/ (docs/apps.md).
APPS_SETUP := $(sort $(wildcard tests/apps/setup_*.sh))

.PHONY: run test test-native test-apps test-containers test-image apps-deps install system-deps bench soak fuzz lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml requirements.lock requirements-dev.lock | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(VENV_NATIVE)/.installed: pyproject.toml requirements-dev.lock
	$(PYTHON_NATIVE) -m venv $(VENV_NATIVE)
	$(VENV_NATIVE)/bin/pip install -q --upgrade pip
	$(VENV_NATIVE)/bin/pip install -q -r requirements-dev.lock
	$(VENV_NATIVE)/bin/pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

run: install
	$(BIN)/peerproxyd demo

# The camera soak (10 minutes of waiting) runs beside the other suites: tests/apps/soak.sh.
test: install system-deps apps-deps
	node --test webclient/test/
	bash tests/apps/soak.sh start $(BIN)/pytest
	$(BIN)/pytest -q --ignore=tests/apps --ignore=tests/test_containers.py
	$(MAKE) --no-print-directory test-native
	$(MAKE) --no-print-directory test-apps APPS_PYTEST_ARGS="--deselect $$(bash tests/apps/soak.sh id)"
	$(MAKE) --no-print-directory test-containers
	bash tests/apps/soak.sh wait

apps-deps: system-deps
	@for script in $(APPS_SETUP); do bash $$script || exit 1; done

test-apps: install apps-deps
	$(BIN)/pytest -q tests/apps $(APPS_PYTEST_ARGS)

test-native: system-deps
	@if [ -z "$(PYTHON_NATIVE)" ]; then \
		echo "test-native: no Python >= 3.12 here: the native backend is not tested"; \
	else \
		$(MAKE) --no-print-directory $(VENV_NATIVE)/.installed && \
		PEERPROXYD_TEST_BACKEND=native $(VENV_NATIVE)/bin/pytest -q $(NATIVE_TESTS); \
	fi

# Both images built (buildah) FROM a debootstrap trixie base and run (podman): 6-9
# minutes, root, Debian's mirror and PyPI (tests/test_containers.py, docs/deploy.md);
# `make test` runs it after the apps.
test-containers: install system-deps
	$(BIN)/pytest -q tests/test_containers.py

# The Pi image (image/pi-gen) built for arm64 and booted with qemu-system-aarch64, TCG only:
# tests/test_pi_boot.py, docs/deploy.md "Pi image under emulation" (its phase times).
IMAGE_APT_PACKAGES := qemu-system-arm qemu-user-static binfmt-support e2fsprogs
test-image: install
	$(MAKE) --no-print-directory system-deps APT_PACKAGES="$(APT_PACKAGES) $(IMAGE_APT_PACKAGES)"
	PEERPROXYD_TEST_IMAGE=1 $(BIN)/pytest -q -s tests/test_pi_boot.py

bench: install apps-deps
	$(BIN)/python bench/core.py
	$(BIN)/python bench/browser.py --quick   # root: ip netns
	$(BIN)/python bench/memory.py   # children on $(VENV_NATIVE) when it has libdatachannel: both backends
	$(BIN)/python bench/concurrency.py --quick
	$(BIN)/python bench/loss.py --quick   # root: ip netns
	$(BIN)/python bench/apps.py --runs 2   # root: ip netns; the apps of `make apps-deps`

# 3 native clients and 2 Chromium tabs x 100 concurrent streams for SOAK_MINUTES, every body
# sha256-checked (bench/soak.py, docs/reliability.md "Soak"); root: ip netns.
SOAK_MINUTES ?= 30
soak: install system-deps
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES)

# Longer fuzzing than `make test` does (docs/reliability.md): the hypothesis targets with
# 100,000 cases each, then each atheris harness for FUZZ_SECONDS. New inputs go to .fuzz/<target>/
# (docs/reliability.md says how to minimize them into tests/fuzz/corpus/), crashes to .fuzz/.
FUZZ_SECONDS ?= 600
fuzz: install
	PEERPROXYD_FUZZ_PROFILE=long $(BIN)/pytest -q --timeout=0 tests/fuzz/test_targets.py
	@for t in frames heads; do mkdir -p .fuzz/$$t && PYTHONPATH=. $(BIN)/python \
		tests/fuzz/atheris_$$t.py -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
		-artifact_prefix=.fuzz/$$t- .fuzz/$$t tests/fuzz/corpus/$$t || exit 1; done

# Re-pin after changing dependencies in pyproject.toml (uses throwaway venvs). The native
# extra is resolved with PYTHON_NATIVE and appended with NATIVE_MARKER, so Python 3.11 and
# armv7 skip it.
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install -q . && .lockenv/bin/pip freeze --exclude peerproxyd > requirements.lock
	.lockenv/bin/pip install -q '.[test,bench]' && .lockenv/bin/pip freeze --exclude peerproxyd > requirements-dev.lock
	rm -rf .lockenv && $(PYTHON_NATIVE) -m venv .lockenv
	.lockenv/bin/pip install -q '.[native]'
	pin="$$(.lockenv/bin/pip freeze | grep -i '^libdatachannel-py==') ; "'$(NATIVE_MARKER)'; \
	for f in requirements.lock requirements-dev.lock; do \
		printf '%s\n' '# the native backend (peerproxyd[native]): wheels for CPython >= 3.12 on x86_64/aarch64 only' \
			"$$pin" >> $$f; done
	rm -rf .lockenv

clean:
	rm -rf $(VENV) $(VENV_NATIVE) .apps .pytest_cache .hypothesis .fuzz
