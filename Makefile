# The front door. `make demo` and `make test` each set up .venv themselves from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
# GPU job slots for `make paper`: GPUs x train.jobs_per_gpu, so snakemake queues training jobs
# instead of starting more than the GPUs take.
GPU_SLOTS ?= 2
SNAKEMAKE := $(BIN)/snakemake --cores $(CORES)
# pytest-xdist workers of `make test` (0: one process); the session fixtures are built once either way.
PYTEST_WORKERS ?= 2
# Each worker takes the next test when it ends one (tests/conftest.py puts the longest first): xdist's
# default hands out long runs of tests up front, which left one worker idle for the last 100 s.
XDIST := -n $(PYTEST_WORKERS) --maxschedchunk 1

.PHONY: demo test test-fast test-cluster test-all paper fashion report lint dry-run clean system-packages gpu-check
# Debian packages the test suite uses: the real-image data set (Fashion-MNIST).
DEBIAN_PACKAGES := dataset-fashion-mnist

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# Python caches the bytecode of each module the first time it is imported, unless this is set (as on
# some CI images): every process of the tests and the DAG would then compile torch again (a second
# apiece). Caching on import beats compiling all 12,867 installed .py files up front (17 s of a 65 s fresh
# install on 2 cores), since the commands import a fraction of them.
unexport PYTHONDONTWRITEBYTECODE

# Reinstall only when the project's dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -e '.[test]'
	touch $@

demo: $(VENV)/.installed  ## the whole DAG on synthetic data, on CPU, in minutes
	$(SNAKEMAKE) --configfile config/quick.yaml
	$(SNAKEMAKE) --configfile config/quick.yaml --report results/synthetic/report.html
	@echo "results: results/synthetic/  report: results/synthetic/report.html"

system-packages:  ## Debian packages the tests use (root: apt-get; else prints the command)
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "missing Debian packages: $$missing (sudo apt-get install $$missing)"; exit 1; fi

test: $(VENV)/.installed system-packages  ## the test suite on CPU, without the SLURM cluster: starts no daemon
	$(BIN)/pytest -q -m "not cluster" $(XDIST)

test-fast: $(VENV)/.installed system-packages  ## `make test` without the slow tests (marker slow): for iterating
	$(BIN)/pytest -q -m "not cluster and not slow" $(XDIST)

test-cluster: $(VENV)/.installed  ## the SLURM tests (root, Debian): installs, starts and stops a one-node cluster
	$(BIN)/pytest -q -m cluster

# Both tiers at once: the SLURM tests mostly wait on the cluster's daemons and queue, so they overlap the
# suite instead of following it (each tier's output is printed whole when it ends).
test-all: $(VENV)/.installed system-packages  ## both tiers (CI)
	$(MAKE) --no-print-directory -j2 --output-sync=target test test-cluster

paper: $(VENV)/.installed  ## the paper's CIFAR-100 experiments in .venv (GPU; set CORES, GPU_SLOTS)
	$(SNAKEMAKE) --resources gpu=$(GPU_SLOTS)

fashion: $(VENV)/.installed  ## the main experiment on Fashion-MNIST (GPU)
	$(SNAKEMAKE) --configfile config/fashion.yaml --resources gpu=$(GPU_SLOTS)

report: $(VENV)/.installed  ## report.html of the default config's results
	$(SNAKEMAKE) --report results/cifar100/report.html

gpu-check:  ## the GPU acceptance command: 8 minutes on one CUDA GPU (torch; not snakemake); results in OUT
	OUT="$(OUT)" PYTHON="$(PYTHON)" bash benchmarks/gpu_check.sh

lint: $(VENV)/.installed
	$(BIN)/snakemake --lint

dry-run: $(VENV)/.installed
	$(SNAKEMAKE) -n

clean:
	rm -rf results logs data/synthetic.pt .snakemake
