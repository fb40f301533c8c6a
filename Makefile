# Set-up is part of every target: a fresh machine needs nothing but python3 and make.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test lint bench train-zoo screenshot clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, the CPU build on this machine: a plain `torch` requirement would pull a CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,web]"
	touch $(STAMP)

# demo and bench own their folders (--overwrite: also folders made before tstitch-outputs.json existed)
demo: $(STAMP)
	$(VENV)/bin/tstitch demo --out outputs/demo --overwrite

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(VENV)/bin/tstitch bench --out benchmarks/results --overwrite

# The page's screenshots in the docs, desktop (1400 px) and phone (400 px) wide: serves the digits page and
# generates three fractions in headless Chromium (Debian's chromium + chromium-driver) with the browser tests'
# driver. The frontier is the demo's: `make demo` first to show it.
screenshot: $(STAMP)
	GRADIO_ANALYTICS_ENABLED=False $(PY) tests/browser.py docs/serve.png docs/serve-phone.png --force

train-zoo: $(STAMP)
	$(VENV)/bin/tstitch train-zoo

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
