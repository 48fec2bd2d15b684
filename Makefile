# Two set-up commands: `make run` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Debian packages the tests use (root on the test machines; skipped if already present).
APT_PACKAGES := iproute2 iptables coturn redis-server chromium shellcheck debootstrap tini apparmor

.PHONY: run test install system-deps bench lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml requirements.lock requirements-dev.lock | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.lock
	$(BIN)/pip install -q --no-deps -e .
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

test: install system-deps
	node --test webclient/test/
	$(BIN)/pytest -q

bench: install
	$(BIN)/python bench/core.py
	$(BIN)/python bench/browser.py --quick   # root: ip netns

# Re-pin after changing dependencies in pyproject.toml (uses a throwaway venv).
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install -q . && .lockenv/bin/pip freeze --exclude peerproxyd > requirements.lock
	.lockenv/bin/pip install -q '.[test,bench]' && .lockenv/bin/pip freeze --exclude peerproxyd > requirements-dev.lock
	rm -rf .lockenv

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
