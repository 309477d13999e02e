# Quick start (Linux x86-64, Python 3.11, ~5 GB free disk: README.md "Quick start"):
#   make run        install what running needs (no dev tools) and train the quickstart experiment
#   make test       add the development tools (pytest, ruff, mkdocs, ...) and run the whole suite
#   make test-fast  the tests that start no Ray, a minute
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install install-run system-deps wheelhouse run test test-fast lint docs format lock locks tf-compat bench clean

# install-run: raytrain and what it needs to run (`make run`); install: the development tools
# too (tests, lint, docs). A dev install serves `make run` as well, so it stamps both.
install-run: $(VENV)/.installed-run
install: $(VENV)/.installed

$(VENV)/.installed-run: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(VENV)/.installed-run $@

# System packages the tests use (root, Debian/Ubuntu): sshd and rsync for the two-machine
# `ray up` test, iproute2 for its network namespaces, PostgreSQL for the tracking-store tests,
# sudo and openssl for MLflow's own user and its TLS on the `ray up` head (mlflow_user.sh).
SYSTEM_PACKAGES := openssh-server rsync iproute2 util-linux python3-venv postgresql sudo openssl

system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p > /dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# Every wheel of a cluster node's hash-pinned lock (requirements/nodes.txt; `make wheelhouse
# EXTRAS=gpu`: requirements/nodes-gpu.txt, TensorFlow's CUDA wheels too), raytrain's build backend
# included, in one folder: cluster_configs/onprem.yaml installs from it with no package index when
# it is there (air-gapped sites), checking each file's sha256 against the lock. Linux x86-64,
# Python 3.11 wheels, whatever machine runs it.
WHEELHOUSE ?= wheelhouse
EXTRAS ?=
NODE_LOCK = requirements/nodes$(if $(EXTRAS),-$(EXTRAS)).txt
# The nodes' wheels: CPython 3.11 on glibc 2.28 or newer (pip matches each platform tag as named).
NODE_WHEELS := --python-version 3.11 --implementation cp --abi cp311 \
               $(foreach v,28 27 26 25 24 23 22 21 20 19 18 17,--platform manylinux_2_$(v)_x86_64) \
               --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 \
               --platform manylinux1_x86_64

wheelhouse: $(WHEELHOUSE)/.built$(EXTRAS)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Only pip is needed (any venv's): not raytrain's install.
$(WHEELHOUSE)/.built$(EXTRAS): $(NODE_LOCK) | $(BIN)/python
	$(BIN)/python -m pip download --quiet --require-hashes --no-deps --only-binary=:all: \
	  $(NODE_WHEELS) --dest $(WHEELHOUSE) -r $(NODE_LOCK)
	@du -sh $(WHEELHOUSE)
	touch $@

run: install-run
	$(BIN)/raytrain run experiments/quickstart.yaml

# Two pytest-xdist workers, each with its own Ray instance, whole modules at a time (their
# fixtures start clusters and servers once), longest first (tests/conftest.py): alone, the suite
# leaves half of 2 cores idle while Ray, servers and clusters start.
TEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

test-fast: install  # no Ray: pure-Python and schema tests, under 2 minutes
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check raytrain tests benchmarks docs/hooks.py
	$(BIN)/ruff format --check raytrain tests benchmarks docs/hooks.py
	$(BIN)/python -m mypy  # strict on raytrain/: [tool.mypy] in pyproject.toml

format: install
	$(BIN)/ruff format raytrain tests benchmarks docs/hooks.py
	$(BIN)/ruff check --fix raytrain tests benchmarks docs/hooks.py

# constraints.txt: the development venv's versions, plus what only cluster nodes install, each
# resolved against those pins (uv, pinned in the dev extra): the `gpu` extra's CUDA wheels and
# nvidia-ml-py, and raytrain's build backend (requirements/build.in). Then the TPU hosts' pins and
# the nodes' hash-pinned locks from both.
NODE_ONLY := ^(nvidia-[a-z0-9-]+|setuptools|wheel)==

lock: install
	{ echo "# Exact versions CI and users install (pip install -c constraints.txt -e '.[dev]')."; \
	  echo "# Regenerate after changing pyproject.toml: make lock"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^raytrain'; } > constraints.txt.new
	$(BIN)/uv pip compile --quiet --no-header --no-annotate $(LOCK_TARGET) \
	  pyproject.toml requirements/build.in --extra gpu -c constraints.txt.new -o constraints.txt.all
	grep -E '$(NODE_ONLY)' constraints.txt.all >> constraints.txt.new
	mv constraints.txt.new constraints.txt && rm constraints.txt.all
	$(MAKE) constraints-tpu.txt
	$(MAKE) locks

# Hash-pinned locks of what cluster nodes install (cluster_configs/ install them with
# `pip install --require-hashes -r`, then raytrain itself with --no-deps): every version is
# constraints.txt's (constraints-tpu.txt's on TPU hosts; tests/test_locks.py checks both), with the
# sha256 of every file PyPI has for it, for Linux x86-64 and Python 3.11. libtpu's wheels need
# glibc 2.31 (the TPU VMs' Ubuntu 22.04 has 2.35). Needs uv: `make install`.
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28
UV_LOCK      = $(BIN)/uv pip compile --quiet --generate-hashes --custom-compile-command 'make locks'
LOCKS        := $(addprefix requirements/,nodes.txt nodes-gpu.txt nodes-gcp.txt nodes-tpu.txt \
                tensorflow-tpu.txt mlflow-server.txt)

locks: $(LOCKS)

# CPU nodes; nodes-gpu.txt adds the `gpu` extra (TensorFlow's CUDA wheels), nodes-gcp.txt the
# `gcp` extra (a GCP head's autoscaler).
requirements/nodes.txt: pyproject.toml constraints.txt requirements/build.in
	$(UV_LOCK) $(LOCK_TARGET) pyproject.toml requirements/build.in -c constraints.txt -o $@

requirements/nodes-%.txt: pyproject.toml constraints.txt requirements/build.in
	$(UV_LOCK) $(LOCK_TARGET) pyproject.toml requirements/build.in --extra $* -c constraints.txt -o $@

# The head's MLflow server, in a venv of its own (cluster_configs/mlflow_user.sh).
requirements/mlflow-server.txt: requirements/mlflow-server.in constraints.txt
	$(UV_LOCK) $(LOCK_TARGET) requirements/mlflow-server.in -c constraints.txt -o $@

# TPU hosts: the `tpu` extra under constraints-tpu.txt, libtpu pinned there. tensorflow-tpu.txt is
# its one line again, reinstalled last (cluster_configs/gcp-tpu.yaml says why).
TPU_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_31

requirements/nodes-tpu.txt: pyproject.toml constraints-tpu.txt requirements/build.in
	$(UV_LOCK) $(TPU_TARGET) pyproject.toml requirements/build.in --extra tpu \
	  -c constraints-tpu.txt -o $@

requirements/tensorflow-tpu.txt: constraints-tpu.txt
	echo tensorflow-tpu | $(UV_LOCK) $(TPU_TARGET) --no-deps - -c constraints-tpu.txt -o $@

# TPU hosts: PyPI's newest tensorflow-tpu is one minor behind the pinned TensorFlow, so they
# install the `tpu` extra with these pins in place of constraints.txt's TensorFlow lines
# (cluster_configs/gcp-tpu.yaml; docs/how-to/gcp.md "TPUs"). Keep them equal to the `tpu` extra.
# libtpu: tensorflow-tpu 2.20.0 asks only libtpu>=0.0.14, and Google names no libtpu release for
# it; 0.0.20 is the newest on PyPI when tensorflow-tpu 2.20.0 was published (2025-08-13: 0.0.20
# came out 2025-08-01, 0.0.21 on 2025-08-15), so the one it was released beside. Chosen by date:
# the pairing has not been run on a TPU.
TPU_TF       := 2.20.0
TPU_TF_KERAS := 2.20.1
TPU_LIBTPU   := 0.0.20
TPU_PINS     := tensorflow==$(TPU_TF) tensorflow-tpu==$(TPU_TF) tf_keras==$(TPU_TF_KERAS) \
                tensorboard==2.20.0 tensorboard-data-server==0.7.2 libtpu==$(TPU_LIBTPU)

constraints-tpu.txt: constraints.txt Makefile
	{ echo "# constraints.txt with TensorFlow's TPU build for TPU hosts. Generated: make constraints-tpu.txt"; \
	  grep -v -E '^(#|tensorflow==|tf_keras==|tensorboard==|tensorboard-data-server==)' constraints.txt; \
	  printf '%s\n' $(TPU_PINS); } > $@

# A second venv with the TPU hosts' TensorFlow (the CPU build of it) for
# tests/test_tf_versions.py: checkpoints cross between it and the pinned TensorFlow. tf_keras
# without its dependencies, which name the `tensorflow` distribution (tensorflow-cpu is the same
# code). CI runs this before the tests; locally the test skips until you do.
TF_COMPAT_VENV := .venv-tf$(subst .,,$(basename $(TPU_TF)))

tf-compat: $(TF_COMPAT_VENV)/.installed

$(TF_COMPAT_VENV)/.installed: constraints-tpu.txt
	$(PYTHON) -m venv $(TF_COMPAT_VENV)
	$(TF_COMPAT_VENV)/bin/python -m pip install --quiet -c constraints-tpu.txt tensorflow-cpu==$(TPU_TF)
	$(TF_COMPAT_VENV)/bin/python -m pip install --quiet --no-deps -c constraints-tpu.txt tf_keras==$(TPU_TF_KERAS)
	touch $@

docs: install  # the documentation site (mkdocs.yml, docs/), warnings as errors
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(TF_COMPAT_VENV) .pytest_cache .ruff_cache .mypy_cache raytrain_results mlflow.db site
