# One cargo target dir outside the clone, so CI and every checkout reuse the compiled dependencies.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/modelhost/target
export MODELHOST_MODELS_DIR ?= $(HOME)/.cache/modelhost/models
# Peers and modelhost alike get 2 threads in tests, benches and the demo (the machines have 2 cores).
export RAYON_NUM_THREADS ?= 2

VENV := .venv
PY := $(VENV)/bin/python
WHEEL_DIR := $(CARGO_TARGET_DIR)/wheels

.DEFAULT_GOAL := help

.PHONY: help  ## show this help
help:
	@grep -E '^\.PHONY: [a-zA-Z_-]+ .*?## .*$$' $(MAKEFILE_LIST) | sed 's/^\.PHONY: //' | awk 'BEGIN {FS = "  ## "}; {printf "\033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(VENV)/.deps: requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# llama-cpp-python, the reference the family checks compare against: PyPI has only its sdist, so the wheel is compiled
# once per machine into ~/.cache/modelhost/wheels (about 10 minutes on 2 cores) and installed from there.
$(VENV)/.peers: $(VENV)/.deps scripts/peer_wheels.py
	$(PY) scripts/peer_wheels.py install $(PY)
	touch $@

.PHONY: peers  ## llama-cpp-python in the venv, from the wheel cache (built on first use)
peers: $(VENV)/.peers

.PHONY: models  ## fetch the sample models (idempotent, checksummed)
models: $(VENV)/.deps
	$(PY) scripts/fetch_models.py "$(MODELHOST_MODELS_DIR)"

.PHONY: build-dev  ## build the extension in release mode into the venv (editable)
build-dev: $(VENV)/.deps
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -q

.PHONY: build-prod  ## build the release wheel and install it into the venv
build-prod: $(VENV)/.deps
	rm -f $(WHEEL_DIR)/modelhost-*.whl
	$(VENV)/bin/maturin build --release -q -o $(WHEEL_DIR)
	$(PY) -m pip install -q --force-reinstall --no-deps $(WHEEL_DIR)/modelhost-*.whl

.PHONY: install  ## venv, tools, llama-cpp-python, release wheel and sample models
install: build-prod peers models

.PHONY: format  ## format Rust and Python
format: $(VENV)/.deps
	cargo fmt --all
	$(VENV)/bin/ruff format python tests benches scripts
	$(VENV)/bin/ruff check --fix python tests benches scripts

.PHONY: lint-python  ## ruff and mypy --strict
lint-python: $(VENV)/.deps
	$(VENV)/bin/ruff format --check python tests benches scripts
	$(VENV)/bin/ruff check python tests benches scripts
	$(VENV)/bin/mypy --strict python/modelhost tests/mypy_examples

.PHONY: lint-rust  ## rustfmt and clippy -D warnings
lint-rust:
	cargo fmt --all -- --check
	cargo clippy --release --all-targets -- -D warnings

.PHONY: lint  ## all linters
lint: lint-rust lint-python

.PHONY: test  ## set everything up, lint, then cargo test (core, server) and pytest (Python API), on the real models
test: install lint
	cargo test --release -p modelhost-core -p modelhost-server
	$(PY) -m pytest -q

.PHONY: demo  ## set everything up, load SmolLM2 with a progress bar, show its info, chat once, unload
demo: install
	$(PY) examples/demo.py

.PHONY: bench  ## modelhost vs llama-cpp-python and sentence-transformers, same files, same run
bench: install
	bash scripts/bench_env.sh
	.venv-bench/bin/python benches/run.py
	.venv-bench/bin/python benches/make_models.py
	.venv-bench/bin/python benches/real_sizes.py

.PHONY: bench-quick  ## seconds-long smoke run of the benchmark harness (modelhost only)
bench-quick: install
	$(PY) benches/run.py --quick

.PHONY: soak  ## long reliability runs: 1000 load/unload cycles and a concurrency soak on the real models
soak: install
	$(PY) scripts/soak.py --cycles 1000 --storm-seconds 60 --soak-seconds 300

.PHONY: fuzz  ## run every cargo-fuzz target for 10 minutes each (needs cargo-fuzz; stable toolchain)
fuzz:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.1 --locked
	bash scripts/fuzz.sh 600

.PHONY: cuda-wheel  ## build a CUDA wheel with NVIDIA's compiler from PyPI (no GPU needed to build)
cuda-wheel:
	bash scripts/build_cuda_wheel.sh

.PHONY: all  ## format, then test
all: format test

.PHONY: clean  ## remove the venv and local build outputs (the shared cargo cache stays)
clean:
	rm -rf $(VENV) dist .pytest_cache .mypy_cache .ruff_cache
