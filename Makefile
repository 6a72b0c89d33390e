# Two commands on a fresh machine: `make demo` and `make test` (both idempotent).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMPS  := .cache/stamps

.PHONY: setup system venv kernel firecracker demo test unit integration check bench clean

setup: system venv kernel
	@# PYTHONDONTWRITEBYTECODE may be set: compile once so every mvmctl start skips it
	@$(BIN)/python -m compileall -q src >/dev/null

system:
	@bash scripts/setup-system.sh

venv: $(STAMPS)/venv

$(STAMPS)/venv: pyproject.toml
	@mkdir -p $(STAMPS)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip >/dev/null
	@$(BIN)/pip install -q -e '.[dev]'
	@touch $@

kernel: venv
	@# the default kernel (kernel = "mvm"): built once per machine, then reused from the cache
	@$(BIN)/mvmctl kernel build
	@# the Debian kernel stays covered by tests (kernel = "debian")
	@$(BIN)/mvmctl kernel fetch

firecracker: venv
	@$(BIN)/python scripts/fetch-firecracker.py

demo: setup
	$(BIN)/mvmctl run --attached examples/hello
	@echo "mvmctl is $(BIN)/mvmctl; \`. $(BIN)/activate\` puts it on PATH"

test: setup
	@bash scripts/setup-test.sh
	@# the real Firecracker binary for the contract tests (pinned, sha256-checked, cached)
	@$(BIN)/python scripts/fetch-firecracker.py >/dev/null
	$(BIN)/pytest -q

unit: venv
	$(BIN)/pytest -q tests/unit

check: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/boot.py

clean:
	rm -rf $(VENV) .cache
