# Two entry points for a fresh machine (see README.md):
#   make run   - set up .venv and run the whole study on the embedded digits
#   make test  - set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[workflow,test]'
	touch $@

run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" snakemake --cores all --resources gpu=1

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m pytest

lint: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" snakemake --lint

clean:
	rm -rf results/*/ resources/datasets logs .snakemake
