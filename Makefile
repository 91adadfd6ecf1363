# dinov3_us — the two commands users need: `make demo` and `make test`.
# Every install step lives here; both targets install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned only where the venv cannot already import torch >= 2.6 (a cluster module or a
# system CUDA build, visible through --system-site-packages, is kept as it is).
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo test lint clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv --system-site-packages $(VENV)
	@if $(PY) -c "import sys, torch; v = tuple(int(p) for p in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(0 if v >= (2, 6) else 1)" 2>/dev/null; then \
		echo "keeping the installed torch: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
		$(PY) -m pip install -q -e ".[test]"; \
	else \
		$(PY) -m pip install -q "$(TORCH_PIN)" -e ".[test]"; \
	fi
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) tools/demo.py --output-dir runs/demo

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache
