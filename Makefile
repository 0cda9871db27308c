# One entry point. `make book` builds the HTML book; `make test` runs every test,
# including the full book build with warnings as errors and every notebook executed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JB := $(BIN)/jupyter-book

.PHONY: book pdf serve test install bench lab clean clean-all unit paper-scale paper-scale-notebooks

$(STAMP): requirements.txt requirements-bench.txt pyproject.toml tools/jupyterlab-overrides.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-bench.txt
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ewc)" >/dev/null
	install -D -m 644 tools/jupyterlab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $(STAMP)

install: $(STAMP)

book: $(STAMP)
	$(JB) build --keep-going -W -n .
	@echo "Book built: file://$(CURDIR)/_build/html/index.html"

# The whole book as one PDF, printed by headless Chromium from the single-page HTML build
# (tests/book_pdf.py says why Chromium and not LaTeX): _build/pdf/book.pdf.
pdf: $(STAMP)
	bash tests/ensure_browser.sh
	bash tests/ensure_pdf_tools.sh
	$(BIN)/python tests/book_pdf.py
	@echo "PDF: $(CURDIR)/_build/pdf/book.pdf"

# The built book over http://127.0.0.1:8000, for readers who prefer a server to file://
# (everything, search excerpts included, also works from file://). Build first: `make book`.
serve:
	@test -f _build/html/index.html || { echo "no _build/html: run 'make book' first"; exit 1; }
	@echo "Serving the book at http://127.0.0.1:8000/ (Ctrl-C stops it)"
	$(BIN)/python -m http.server --directory _build/html --bind 127.0.0.1 8000

test: $(STAMP)
	bash tests/ensure_browser.sh
	bash tests/ensure_pdf_tools.sh
	$(BIN)/python -m pytest -ra --durations=25

unit: $(STAMP)
	$(BIN)/python -m pytest -ra -m "not book and not browser and not notebook"

bench: $(STAMP)
	$(BIN)/python benchmarks/fisher_speed.py

# JupyterLab on the notebooks, in class mode (EWC_CLASS=1: projector figure style, widget
# progress bars, claims reported rather than asserted), without news pop-ups or update checks
# (tools/jupyter_lab_config.py); --allow-root when run as root. Prints the URL to open.
lab: $(STAMP)
	@echo "Starting JupyterLab on notebooks/ (class mode): open the http://localhost:8888/lab?token=... URL it prints below."
	EWC_CLASS=1 $(BIN)/jupyter lab --config=tools/jupyter_lab_config.py \
	  $$(test "$$(id -u)" = 0 && echo --allow-root) notebooks/

# The recorded experiments at the paper's settings (Table S1): Figures 2A, 2C, 2B, seeds 0-2,
# written to results/*.json as each run finishes (resumable; hours of CPU). See
# notebooks/paper_scale_runs.md. One figure: .venv/bin/python tools/paper_scale.py fig2a --seeds 0
paper-scale: $(STAMP)
	$(BIN)/python tools/paper_scale.py all

# The notebooks that still have an EWC_PAPER_SCALE=1 switch, executed with it and no time
# limit; executed copies land in _build/paper-scale/*.ipynb. One: make paper-scale-notebooks NB=...
paper-scale-notebooks: $(STAMP)
	$(BIN)/python tools/run_paper_scale.py $(NB)

clean:
	$(JB) clean . || rm -rf _build/html

clean-all:
	rm -rf _build .nbtest
