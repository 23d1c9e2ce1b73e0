# Sleepwell: `make run` serves the demo model, `make test` runs every test.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
PYTEST_PROCS ?= 2
PYTEST_XDIST := $(if $(filter 0,$(PYTEST_PROCS)),,-n $(PYTEST_PROCS) --dist loadfile)

# The torch build (issue 20): TORCH=cpu, TORCH=cu128, ... (a directory of
# download.pytorch.org/whl). Unset: TORCH_CUDA when an NVIDIA driver is visible (nvidia-smi
# runs, or its /proc file exists), else cpu. docs/gpu.md says which build a driver needs.
TORCH_CUDA ?= cu128
NVIDIA_DRIVER_FILE ?= /proc/driver/nvidia/version
ifeq ($(origin TORCH),undefined)
TORCH := $(shell if nvidia-smi >/dev/null 2>&1 || test -e $(NVIDIA_DRIVER_FILE); \
	then echo $(TORCH_CUDA); else echo cpu; fi)
endif
ifneq ($(words $(TORCH)) $(filter cpu cu% rocm%,$(TORCH)),1 $(TORCH))
$(error TORCH=$(TORCH): name one build of download.pytorch.org/whl, e.g. cpu or cu128)
endif
# cpu: torch==2.13.0 from the configured index, which resolves to the CPU wheel here (and
# offline, from the wheel on disk); a CUDA build only comes from PyTorch's own index.
TORCH_INDEX := $(if $(filter cpu,$(TORCH)),,--index-url https://download.pytorch.org/whl/$(TORCH))

# One stamp per torch build, so naming another build installs it; then the runtime
# dependencies (`make run`), and the dev extra only for the targets that use its tools.
TORCH_STAMP := $(VENV)/.torch-$(TORCH)
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install install-dev run test test-stress lint typecheck unit bench clean

install: $(RUNTIME_STAMP)

install-dev: $(DEV_STAMP)

# pip keeps an installed torch==2.13.0 of another build (+cpu satisfies ==2.13.0), so a
# different build is uninstalled first; the same build is left alone.
$(TORCH_STAMP):
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	rm -f $(VENV)/.torch-*
	$(PY) -m pip show torch 2>/dev/null | grep -qx 'Version: 2.13.0+$(TORCH)' || { \
		$(PY) -m pip uninstall -q -y torch && \
		$(PY) -m pip install -q torch==2.13.0 $(TORCH_INDEX); }
	touch $@

$(RUNTIME_STAMP): pyproject.toml $(TORCH_STAMP)
	$(PY) -m pip install -q -e .
	touch $@

$(DEV_STAMP): $(RUNTIME_STAMP)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

run: install
	@$(VENV)/bin/gunicorn -c gunicorn.conf.py

lint: install-dev
	$(VENV)/bin/ruff check .

typecheck: install-dev
	$(VENV)/bin/mypy app

# Two processes, each taking whole files (module-scoped servers stay in one process): most
# of the suite's time is servers booting and fault windows, which overlap on 2 cores
# (issue 19: 811 tests in 12:49-13:19 with 2, 14:39 with 3). PYTEST_PROCS=0: one process.
test: lint typecheck
	$(VENV)/bin/pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

# The whole suite beside a CPU hog on every core (issue 9): CI shares its machine, so the
# tests must hold with both cores busy. The hog is bounded and dies with the suite.
test-stress: lint typecheck
	.ci/with-cpu-hog $(VENV)/bin/pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

bench: install-dev
	$(PY) bench/throughput.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
