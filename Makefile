# diffbook: every target sets up what it needs, on a machine that has only Python 3.11 and pip.
#   make book        build the book into _build/html (renders committed notebook outputs, no execution)
#   make pdf         the book as one PDF, _build/pdf/diffbook.pdf, printed offline by the system Chromium
#   make test        unit tests, notebooks in the quick profile (nbval), then a strict book build
#   make lint        ruff on the whole tree, mypy over src/
#   make notebooks   re-execute every notebook in the book profile and save outputs (NB=path for one)
#   make bench       the package against diffusers, torchvision and clean-fid: ratios into benchmarks/RESULTS.md
#   make exercises   students' copies of the notebooks (solutions stubbed out) in exercises/ (committed)
#   make students-book  the book without its solutions, for a course to publish: _build/students-src/_build/html
#   make lab         JupyterLab on notebooks/, its python3 kernel the package's environment

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.diffbook-installed
NB     ?= notebooks
JOBS   ?= 2
LAB_ARGS ?=
# Jupyter refuses to run as root without being told to; containers and CI machines often run as root.
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

export MPLBACKEND ?= Agg
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: install book pdf test unit nbtest lint notebooks exercises students-book bench gpu-check lab clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first and pinned, so the package's lower bound is met without a new download.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -e ".[book,metrics,dev,sd,lab]"
	touch $(STAMP)

install: $(STAMP)

book: install
	$(BIN)/jupyter-book build . --builder html --warningiserror --keep-going

# The single page is written beside the root page (book/), but its figures and styles are linked from the site's
# root, so it is printed from a copy there.
pdf: install
	$(BIN)/jupyter-book build . --builder singlehtml --keep-going
	cp _build/singlehtml/book/preface.html _build/singlehtml/diffbook.html
	$(BIN)/python -m diffbook pdf _build/singlehtml/diffbook.html --out _build/pdf/diffbook.pdf

unit: install
	$(BIN)/python -m pytest tests -n $(JOBS)

nbtest: install
	DIFFBOOK_PROFILE=quick TQDM_DISABLE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest notebooks --nbval-lax --nbval-current-env \
		-n $(JOBS) --dist loadfile --ignore=_build -p no:cacheprovider

test: unit nbtest book

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

notebooks: install
	DIFFBOOK_PROFILE=book $(BIN)/python -m diffbook notebooks $(NB)

exercises: install
	$(BIN)/python -m diffbook exercises --out exercises

# The students' edition: the same book with every solution stubbed out and its checks' outputs dropped.
students-book: install
	$(BIN)/python -m diffbook exercises --book _build/students-src
	$(BIN)/jupyter-book build _build/students-src --builder html --warningiserror --keep-going
	@echo "The students' edition: _build/students-src/_build/html/index.html"

bench: install
	$(BIN)/python -m benchmarks.peers --results benchmarks/RESULTS.md

# One GPU, under 8 minutes: a step of every full-scale config, sampling throughput, peers.py; into RESULTS.md.
gpu-check: install
	$(BIN)/python -m benchmarks.gpu_check --device cuda --results benchmarks/RESULTS.md

# The kernelspec goes into the environment, and JUPYTER_PATH puts it before any python3 kernel of the user's,
# so that the notebooks (whose kernel is python3) run where the package is installed.
lab: install
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (diffbook)" >/dev/null
	JUPYTER_PATH="$(CURDIR)/$(VENV)/share/jupyter" $(BIN)/jupyter lab --notebook-dir notebooks $(LAB_ROOT) $(LAB_ARGS)

clean:
	rm -rf _build .pytest_cache .ruff_cache
