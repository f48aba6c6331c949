# taskfleet: `make demo` runs the 2,000-job demo on the embedded stack; `make test` runs the tests.
# Both install exactly what uv.lock pins (hashes checked) into .venv on every run: a no-op
# when nothing changed, and a clear failure when pyproject.toml and uv.lock disagree.
# Needs Python 3.11+ only: no Docker, no services. `make test` also installs a few Debian
# packages for three tests when missing (TEST_PACKAGES below). uv itself comes from PyPI, pinned by hash.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
UV_HOME := .venv-uv
UV := $(UV_HOME)/bin/uv
# Extras installed by `make`: all of them, embedded and flower (the demo, the tests), test
# (the tests, the linters) and bench (the benchmarks). A worker or producer needs none.
EXTRAS := --all-extras

# uv: never download an interpreter, put the project in $(VENV).
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: demo test lint bench up install lock upgrade lock-tools clean test-tools

$(UV): requirements-uv.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "taskfleet needs Python 3.11 or newer (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/python -m pip install --quiet --require-hashes --no-deps -r requirements-uv.txt
	@touch $(UV)

# --locked: install the lock as it is, and refuse (instead of re-resolving) when
# pyproject.toml asks for something uv.lock does not pin.
# --compile-bytecode, then compileall of the package: every module gets its .pyc now. uv
# writes none by default, and with PYTHONDONTWRITEBYTECODE set (CI images, this project's
# dev machines) no process ever writes one: each worker start then compiled ~840 modules
# from source, 1.6 s of a solo worker's 3.6 s start here. compileall only redoes changed files.
install: $(UV)
	@$(UV) sync --locked $(EXTRAS) --python $(PYTHON) --quiet --compile-bytecode || { \
		echo >&2 "make: uv.lock does not match pyproject.toml (or could not be installed)."; \
		echo >&2 "      After changing dependencies run 'make lock' and commit uv.lock with pyproject.toml."; \
		exit 1; }
	@$(BIN)/python -m compileall -q taskfleet >/dev/null

demo: install
	$(BIN)/taskfleet demo

up: install
	$(BIN)/taskfleet up

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Then the broker, priority, dead-letter, redelivery and result tests again on stock kombu's
# Redis transport (TASKFLEET_FAST_TRANSPORT=false; README, "The whole transport has a switch
# back"): the switch back from taskfleet's fast paths must keep working. About 45 s on 2
# cores. Left out of that pass: RabbitMQ tests (no Redis transport involved) and the reclaim
# tests that build taskfleet's transport themselves (the same test either way).
STOCK_TRANSPORT_TESTS := tests/integration/test_priorities.py tests/integration/test_dead_letters.py \
	tests/integration/test_reclaim.py::test_a_redelivered_job_whose_result_is_final_is_acked_not_run \
	tests/integration/test_result_backend.py \
	tests/integration/test_result_pipelining.py tests/integration/test_persister_poison.py
# Extra pytest arguments for both passes, e.g. PYTEST_ARGS="--basetemp /tmp/pt".
PYTEST_ARGS ?=

# Debian packages three tests need: a QEMU VM with a cgroup v2 kernel (tests/support/vm.py:
# whole-run sandbox limits, which this host's cgroup v1 controllers cannot enforce), runc,
# Docker's runtime (tests/support/oci.py: the compose CPU worker's privileges), and headless
# Chromium (Flower's Broker page as a browser renders it). Installed when missing, as root
# with apt-get on x86_64 (about 35 s); elsewhere the message says so and those tests skip
# (they fail when CI is set).
TEST_PACKAGES := qemu-system-x86 busybox-static linux-image-amd64 cpio file kmod runc chromium
TEST_TOOLS_MISSING = $(BIN)/python -c 'import shutil, sys; from tests.support import oci, vm; sys.exit(bool(vm.missing()) or not oci.available() or not shutil.which("chromium"))'

test-tools: install
	@$(TEST_TOOLS_MISSING) 2>/dev/null || { \
		if [ "$$(id -u)" = 0 ] && [ "$$(uname -m)" = x86_64 ] && command -v apt-get >/dev/null; then \
			echo "make: installing $(TEST_PACKAGES) for the VM, runc and Chromium tests"; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y -q --no-install-recommends $(TEST_PACKAGES) >/dev/null || \
			{ apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $(TEST_PACKAGES) >/dev/null; }; \
		else echo "make: the VM, runc and Chromium tests need $(TEST_PACKAGES) (Debian, x86_64): they will skip"; fi; }

# Two lanes at once, which share no service, so they fit 2 cores (most of their time is
# spent waiting on workers and servers):
# - main: the integration and reliability tests (those that restart a shared service last);
# - side: mypy, then SIDE_TESTS (modules that bring their own fleets or stacks and need no
#   RabbitMQ, which the main lane restarts; ~280 s alone), then the unit tests, then the
#   stock-transport pass, all on an embedded stack of their own (the stock pass's clean-ups
#   flush result keys: on the main lane's stack they took a running test's result).
# ruff runs first (it takes a second). The side lane's output follows the main lane's.
# PYTEST_ARGS reach every run, but for --basetemp=... (two runs in one folder would delete
# each other's).
SIDE_TESTS := tests/integration/test_reclaim.py tests/integration/test_cli.py \
	tests/integration/test_supervisor_restarts.py tests/reliability/test_chaos.py
SIDE_STACK := $(CURDIR)/.taskfleet/test-stack-side
SIDE_ARGS = $(filter-out --basetemp=%,$(PYTEST_ARGS))

test: install test-tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@side_log=$$(mktemp); \
	{ { $(BIN)/mypy && \
		TASKFLEET_TEST_STACK_DIR=$(SIDE_STACK) $(BIN)/python -m pytest -m "not disruptive" \
			$(SIDE_ARGS) $(SIDE_TESTS); side=$$?; \
		TASKFLEET_TEST_STACK_DIR=$(SIDE_STACK) $(BIN)/python -m pytest tests/unit \
			$(SIDE_ARGS); unit=$$?; \
		TASKFLEET_TEST_STACK_DIR=$(SIDE_STACK) TASKFLEET_FAST_TRANSPORT=false \
			$(BIN)/python -m pytest -m "not rabbitmq" $(SIDE_ARGS) $(STOCK_TRANSPORT_TESTS); \
			stock=$$?; \
		test $$side -eq 0 && test $$unit -eq 0 && test $$stock -eq 0; \
	} > $$side_log 2>&1; echo $$? > $$side_log.rc; } & \
	$(BIN)/python -m pytest tests/integration tests/reliability $(PYTEST_ARGS) \
		$(addprefix --ignore=,$(filter-out tests/reliability/test_chaos.py,$(SIDE_TESTS))) \
		--deselect tests/reliability/test_chaos.py::test_scenario; main=$$?; \
	wait; echo "--- side lane: mypy, $(SIDE_TESTS), tests/unit, the stock-transport pass ---"; \
	cat $$side_log; side=$$(cat $$side_log.rc); rm -f $$side_log $$side_log.rc; \
	test $$main -eq 0 && test $$side -eq 0

bench: install
	$(BIN)/python -m bench

# Re-resolve uv.lock after editing pyproject.toml, keeping every pin that still fits.
lock: $(UV)
	$(UV) lock --python $(PYTHON)

# Move pins forward: `make upgrade PACKAGE=redis` for one package, `make upgrade` for all.
upgrade: $(UV)
	$(UV) lock --python $(PYTHON) $(if $(PACKAGE),--upgrade-package $(PACKAGE),--upgrade)

# Re-pin uv itself: `make lock-tools UV_VERSION=x.y.z`.
lock-tools: $(UV)
	@test -n "$(UV_VERSION)" || { echo >&2 "usage: make lock-tools UV_VERSION=x.y.z"; exit 2; }
	{ sed -n '1,2p' requirements-uv.txt; echo "uv==$(UV_VERSION)" | $(UV) pip compile \
		--universal --generate-hashes --no-header --python-version 3.11 -; } > requirements-uv.new
	mv requirements-uv.new requirements-uv.txt

clean:
	rm -rf $(VENV) $(UV_HOME) .taskfleet .pytest_cache .mypy_cache .ruff_cache
