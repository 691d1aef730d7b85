# Two entry points, each self-contained on a fresh machine with python3:
#   make demo   installs everything into .venv and runs the main job
#   make test   installs everything into .venv and runs the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/mae_mnist

.PHONY: demo test install clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[tfds,test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m maskmodel.main --config configs/mae/mnist_vit_tiny.py --workdir $(WORKDIR)
	@echo "report: $(WORKDIR)/report.md"

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) workdirs
