# Quick start (Linux x86-64, Python 3.11, ~5 GB free disk: README.md "Quick start"):
#   make run        install what running needs (no dev tools) and train the quickstart experiment
#   make test       add the development tools (pytest, ruff, mkdocs, ...) and run the whole suite
#   make test-fast  the tests that start no Ray, a minute
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install install-run system-deps wheelhouse run test test-fast lint docs format lock tf-compat bench clean

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

# Every pinned wheel raytrain needs on a cluster node, raytrain's own and its build backend
# included, in one folder: cluster_configs/onprem.yaml installs from it with no package index
# when it is there (air-gapped sites). `make wheelhouse EXTRAS=gpu` adds TensorFlow's CUDA wheels.
WHEELHOUSE ?= wheelhouse
EXTRAS ?=

wheelhouse: $(WHEELHOUSE)/.built$(EXTRAS)

$(WHEELHOUSE)/.built$(EXTRAS): pyproject.toml constraints.txt | install-run
	$(BIN)/python -m pip wheel --quiet -c constraints.txt --wheel-dir $(WHEELHOUSE) \
	  ".$(if $(EXTRAS),[$(EXTRAS)])" setuptools wheel
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

lock: install
	{ echo "# Exact versions CI and users install (pip install -c constraints.txt -e '.[dev]')."; \
	  echo "# Regenerate after changing pyproject.toml: make lock"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^raytrain'; } > constraints.txt
	$(MAKE) constraints-tpu.txt

# TPU hosts: PyPI's newest tensorflow-tpu is one minor behind the pinned TensorFlow, so they
# install the `tpu` extra with these pins in place of constraints.txt's TensorFlow lines
# (cluster_configs/gcp-tpu.yaml; docs/how-to/gcp.md "TPUs"). Keep them equal to the `tpu` extra.
TPU_TF       := 2.20.0
TPU_TF_KERAS := 2.20.1
TPU_PINS     := tensorflow==$(TPU_TF) tensorflow-tpu==$(TPU_TF) tf_keras==$(TPU_TF_KERAS) \
                tensorboard==2.20.0 tensorboard-data-server==0.7.2

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
