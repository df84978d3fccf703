# Two commands on a fresh machine:
#   make demo    venv + install + the default recipe end to end (runs/demo/report.html)
#   make test    the test suite
# GPU users pick their torch build: make demo TORCH="torch==2.5.1"

PYTHON ?= python3
TORCH  ?= torch==2.13.0
VENV   ?= .venv
PY     := $(VENV)/bin/python
# one stamp per torch choice, so changing TORCH reinstalls it
STAMP  := $(VENV)/.installed-$(subst <,_,$(subst >,_,$(subst =,_,$(TORCH))))

.PHONY: demo quick test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(VENV)/bin/latentforge run configs/shapes_sg2im.yaml

quick: $(STAMP)
	$(VENV)/bin/latentforge run configs/shapes_sg2im.yaml --quick

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
