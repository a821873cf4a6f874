# Every target creates .venv if missing and installs into it (idempotent: the stamp file
# is only rebuilt when the package metadata changes).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint data notebooks clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[train,dev,notebooks]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sottovoce demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m experiments.bench --out BENCHMARKS.md

lint: $(STAMP)
	$(BIN)/ruff check .

data: $(STAMP)
	$(BIN)/python -m audio.fetch_hedgewars data/hedgewars

notebooks: $(STAMP)
	$(BIN)/python notebooks/execute.py

clean:
	rm -rf $(VENV) build *.egg-info
