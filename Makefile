# vaegen: `make demo` runs the main job, `make test` runs the tests.  Both create the virtual
# environment (.venv) and install the package with its pinned ranges on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
FMNIST_IDX ?= /usr/share/datasets/fashion-mnist
DEMO_DIR ?= runs/demo
NOTEBOOK_OUT := runs/notebook/why_vae_generative.ipynb
PYTEST_ARGS ?=
# Test processes (pytest-xdist); each test module runs whole in one of them (--dist loadscope), so
# its module-scoped fixtures (trained tiny runs, the tiny compare study) are built once, not once per process.
TEST_WORKERS ?= 2

.PHONY: venv data demo test test-fast docs wheel-check notebook bench bench-eval clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# The documentation's build dependencies (the `docs` extra: MkDocs, Material, mkdocstrings, build).
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,docs]'
	touch $(DOCS_STAMP)

# Fashion-MNIST as a TFDS dataset: already prepared, else imported from local IDX files
# (Debian's dataset-fashion-mnist), else downloaded by TFDS; as a last resort on Debian as root,
# the Debian package is installed and imported.
data: $(STAMP)
	@$(BIN)/vaegen data prepare fashion_mnist || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ ! -d "$(FMNIST_IDX)" ]; then \
	    echo "installing Debian's dataset-fashion-mnist"; \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dataset-fashion-mnist || \
	     { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dataset-fashion-mnist; }) && \
	    $(BIN)/vaegen data prepare fashion_mnist --from-idx "$(FMNIST_IDX)"; \
	  else exit 1; fi; }

demo: data
	$(BIN)/vaegen demo --workdir $(DEMO_DIR)
	@echo
	@echo "vaegen is installed in $(VENV)/, not on the PATH: before the commands of README.md and docs/,"
	@echo "run this once in each new shell:"
	@echo
	@echo "    source $(VENV)/bin/activate"
	@echo
	@echo "then e.g.  vaegen sample --workdir $(DEMO_DIR)/vae   (or call $(BIN)/vaegen directly)."

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

# The suite without the tests marked slow (end-to-end trainings, studies, subprocesses, the docs'
# examples and the notebook): the closed forms, estimators, components, errors and files, in under
# 2 minutes on 2 cores.  `make test` runs them all.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope -m "not slow" $(PYTEST_ARGS)

# The documentation site, from docs/ into site/, strictly: a broken link, a missing reference or a
# docstring that does not render fails the build.  Its notebook page shows the executed notebook
# (below), which is executed first when it is missing or older than the notebook or the package.
docs: $(DOCS_STAMP) $(NOTEBOOK_OUT)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# A wheel built from the repository, installed into a fresh virtual environment, runs there.
wheel-check: $(DOCS_STAMP)
	PYTHON=$(BIN)/python bash scripts/check_wheel.sh

# The seed question as an executed notebook: runs docs/why_vae_generative.ipynb (about a minute on
# a 2-core CPU) and writes the executed copy, figures inline, to runs/notebook/ (not committed),
# again whenever the notebook or the package changed since.
notebook: $(NOTEBOOK_OUT)

$(NOTEBOOK_OUT): docs/why_vae_generative.ipynb $(STAMP) $(shell find vaegen -name '*.py')
	$(BIN)/python scripts/run_notebook.py docs/why_vae_generative.ipynb $(NOTEBOOK_OUT)

bench: $(STAMP)
	$(BIN)/python scripts/bench_train.py

# Likelihood estimators (IS k=5000, AIS 1000x16x10) on the MLP VAE; JSON on stdout.
# BENCH_EVAL_ARGS="--n-images 1000 --ais-images 8" for a small CPU.
bench-eval: $(STAMP)
	$(BIN)/python scripts/bench_eval.py $(BENCH_EVAL_ARGS)

clean-venv:
	rm -rf $(VENV)
