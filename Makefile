# The two commands of the README: `make demo` and `make test`. Everything else is a step they use.
PYTHON ?= python3.11
VENV ?= .venv
REF_VENV ?= .venv-ref
# torch is pinned to a CPU-usable release that both our converter and the reference implementation run on.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST_ARGS ?=

.PHONY: all venv refenv test demo data notebooks clean

all: test

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

# The AlexaTM reference implementation (PyTorch, transformers 4.26.1) lives in its own environment: the
# parity tests drive it by subprocess so its old transformers never meets ours.
$(REF_VENV)/.installed:
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/pip install -q --upgrade pip
	$(REF_VENV)/bin/pip install -q "$(TORCH_SPEC)" transformers==4.26.1 sentencepiece "safetensors>=0.4,<1"
	$(REF_VENV)/bin/pip install -q --no-deps alexa-teacher-models==1.0.1
	touch $@

refenv: $(REF_VENV)/.installed

test: venv refenv
	ALEXATM_REFERENCE_PYTHON=$(abspath $(REF_VENV))/bin/python $(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS) tests

demo: venv
	$(VENV)/bin/alexatm-jax demo $(DEMO_ARGS)

# Rebuild the bundled demo/test data from ../shared/data (maintainers only; the result is committed).
data: venv
	$(PY) scripts/build_bundled_data.py --shared ../shared/data --out alexatm_jax/data/bundled

# notebooks/NN_*.py (jupytext percent format) are the sources; this rewrites their paired .ipynb, the copies
# Colab opens (--update keeps the cell ids, so unchanged cells do not show in diffs).
notebooks: venv
	$(VENV)/bin/jupytext --update --to ipynb notebooks/[0-9]*.py

clean:
	rm -rf $(VENV) $(REF_VENV) .pytest_cache
