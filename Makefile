# The two commands of the README: `make figures` and `make test`. Both set up .venv first.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PARAMS  ?=
DEVICE  ?= auto
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))

.PHONY: all install datasets figures notebooks test unit nbval bench clean

all: test

# torch and torchvision are pinned in pyproject.toml (2.14.1 / 0.29.1): this machine's pip takes them from disk.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	@touch $@

install: $(VENV)/.installed

# Fashion-MNIST from Debian's dataset-fashion-mnist: the clean-label rows of notebook 09 and the
# real-data loader test use it (apt-get as root, else through sudo).
FASHION_MNIST := /usr/share/datasets/fashion-mnist
datasets:
	@test -d $(FASHION_MNIST) || { SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; } \
	  || echo "warning: could not install dataset-fashion-mnist (notebook 09 needs it)"

## Regenerate every figure into figures/ (PARAMS=params/X.yaml for another setting, DEVICE=cuda for a GPU).
figures: install datasets
	$(PY) -m ftsam.batch --device $(DEVICE) $(if $(PARAMS),--params $(PARAMS))

## Refresh the committed notebooks' outputs (the references nbval compares against).
notebooks: install datasets
	$(PY) -m ftsam.batch --inplace

## Unit tests, then every notebook rerun and compared with its committed outputs.
test: install datasets unit nbval

unit: install
	$(PY) -m pytest -q tests

# A fresh run trains every model: notebook 09's first cell (ten attacks, WaNet at 100 epochs) ran past
# 900 s on a 2.5 GHz Xeon, so a cell gets 40 minutes (CI's whole budget is 90).
nbval: install datasets
	$(PY) -m pytest -q --nbval --nbval-cell-timeout=2400 --nbval-sanitize-with tests/nbval_sanitize.cfg $(NOTEBOOKS)

## Benchmarks (not tests): writes BENCHMARKS.md (THREADS=n pins torch's threads).
bench: install
	$(PY) -m benchmarks.run $(if $(THREADS),--threads $(THREADS))

clean:
	rm -rf runs results notebooks/executed
