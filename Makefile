# Two entry points for a fresh machine (see README.md):
#   make run   - set up .venv and run the whole study on the embedded digits
#   make test  - set up .venv and run the test suite, on every core (TEST_WORKERS=0: in one process)
#   make test-fast - the tests not marked slow (for development, under 2 minutes)
#   make lint  - ruff (lint and format check), mypy and snakemake --lint
#   make push / make pull - share models and results through DVC's default remote
#                (STUDY=<study id>: one study only, e.g. STUDY=digits-smoke;
#                 REMOTE=<name>: another DVC remote, e.g. an S3 or SSH one: docs/remotes.md)
#   make report - the HTML report of a study: results/<study id>/report.html
#                (CONFIG=config/test.yaml for another study than the default)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config/config.yaml
STUDY ?=
REMOTE ?=
# pytest-xdist workers; each test module runs whole on one worker (its fixtures are built once),
# the longest first (tests/conftest.py)
TEST_WORKERS ?= auto

.PHONY: setup run test test-fast lint clean push pull report

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[workflow,test,lint]'
	touch $@

run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" snakemake --cores all --resources gpu=1

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

test-fast: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m pytest -m "not slow"

push: setup
	$(BIN)/python -m onepixel.workflow.sharing push $(if $(STUDY),--study $(STUDY)) $(if $(REMOTE),--remote $(REMOTE))

# dvc pull, then touch the pulled results in DAG order so Snakemake takes them as
# up to date (DVC gives pulled files new modification times in any order)
pull: setup
	$(BIN)/python -m onepixel.workflow.sharing $(if $(STUDY),--study $(STUDY)) $(if $(REMOTE),--remote $(REMOTE))

report: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" snakemake --configfile $(CONFIG) \
		--report "$$($(BIN)/python -m onepixel.study --config $(CONFIG) --report)"

LINTED := src tests benchmarks workflow

lint: setup
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy
	PATH="$(CURDIR)/$(BIN):$$PATH" snakemake --lint

clean:
	rm -rf results/*/ .snakemake
