# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned in the same pip command as everything that depends on it: the CPU wheel of
# this version is what the project's machines have on disk.
TORCH := torch==2.13.0

.PHONY: demo test check bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)" -e ".[test]"
	touch $@

DEMO_DATA := data/synth
DEMO_RUN := runs/demo

# Generates the synthetic data once, trains RVSE++ with SelHN (resuming a run that is already
# there, never overwriting it) and prints the test recall table.
demo: $(BIN)/.installed
	@test -f $(DEMO_DATA)/test_caps.txt || $(BIN)/selhn data synth --out $(DEMO_DATA)
	@if [ -e $(DEMO_RUN)/last ]; then resume=--resume; else resume="--config demo"; fi; \
	$(BIN)/selhn train --data $(DEMO_DATA) --out $(DEMO_RUN) $$resume
	$(BIN)/selhn eval --checkpoint $(DEMO_RUN)/best --data $(DEMO_DATA) --split test

# The browser test of selhn serve drives Debian's Chromium through its ChromeDriver.
BROWSER := /usr/bin/chromedriver

$(BROWSER):
	apt-get update -qq && apt-get install -y -qq chromium chromium-driver

test: $(BIN)/.installed $(BROWSER)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=15

# The fast tier, for every edit: the tests marked slow (wheel, browser, distributed, subprocess,
# training; pyproject.toml) are left out. `make test` runs them all.
check: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow"

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/loss_bench.py
	$(BIN)/python benchmarks/train_step.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
