# Every target bootstraps .venv when it is missing (or setup.cfg changed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint corpus clean reliability load soak

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c "import ensurepip" 2>/dev/null || { \
	  echo "python3-venv is missing: installing it with apt"; \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq python3-venv; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,demo]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/musegate demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The slow half of tests/reliability (the fast half runs in `make test`).
reliability: $(STAMP)
	$(BIN)/python -m pytest -q -m reliability tests/reliability

# 50 clients against a real `musegate serve` before supysonic (tests/reliability/load.py):
# the figures of docs/reliability.md "Load and soak". Reports in build/load.{json,md}.
load: $(STAMP)
	$(BIN)/python -m tests.reliability.load --clients 50 --minutes 10 --json build/load.json

soak: $(STAMP)
	$(BIN)/python -m tests.reliability.load --clients 50 --minutes 60 --json build/soak.json

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m pip install -q 'bliss-audio==0.1.11' 'voyager>=2.0'
	$(BIN)/python bench/analysis.py
	$(BIN)/python bench/index.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/jellyfin.py
	$(BIN)/python bench/ui_map.py

clean:
	rm -rf $(VENV) demo-data build *.egg-info
