# The two Quickstart commands (`make demo`, `make test`) create or reuse a local virtualenv.
# torch==2.13.0 is installed before the package so that pip never resolves a newer,
# CUDA-bundled torch on a CPU machine.
#
# Two TransformerLens backends (docs/install.md): `make test` runs the whole suite on the default
# one, TransformerLens 3.9's HookedTransformer (pinned here: pip would otherwise pick 4.x, which
# the package also accepts); `make test-bridge` runs a representative subset on TransformerLens
# 4's TransformerBridge in a second virtualenv (.venv-tl4).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mapflow-installed
BRIDGE_VENV ?= .venv-tl4
BRIDGE_PY := $(BRIDGE_VENV)/bin/python
BRIDGE_STAMP := $(BRIDGE_VENV)/.mapflow-installed
# the bridge subset: the backend seam, the core (hooks, engine, lean suffix forward, the
# TransformerLens surface), a Llama family (the LLaVA adapters), the M-RoPE families (Qwen2-VL /
# Qwen2.5-VL; Qwen3-VL generation; GLM-4.1V: sandwich norms, partial adjacent-pair rotary), the
# SynthTV organism and its demo
BRIDGE_TESTS := tests/test_backends.py tests/test_hooks.py tests/test_engine.py \
	tests/test_suffix_forward.py tests/test_transformerlens.py tests/test_models_llava.py \
	tests/test_models_qwen_vl.py tests/test_models_glm4v.py tests/test_models_llava_synthtv.py \
	"tests/test_models_qwen3_vl.py::test_qwen3_generate_and_teacher_forced_answer_equal_hf" \
	"tests/test_cli.py::test_demo_table_agrees_with_the_analyses_run_separately"

.PHONY: demo test test-bridge install clean

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0 "transformer-lens>=3.9,<4"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

$(BRIDGE_STAMP): pyproject.toml setup.py
	test -x $(BRIDGE_PY) || $(PYTHON) -m venv $(BRIDGE_VENV)
	$(BRIDGE_PY) -m pip install --quiet --upgrade pip
	$(BRIDGE_PY) -m pip install --quiet torch==2.13.0 "transformer-lens>=4.3,<5"
	$(BRIDGE_PY) -m pip install --quiet -e ".[dev]"
	touch $(BRIDGE_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mapflow-tl demo

test: $(STAMP)
	$(PY) -m pytest -q

test-bridge: $(BRIDGE_STAMP)
	$(BRIDGE_PY) -m pytest -q $(BRIDGE_TESTS)

clean:
	rm -rf $(VENV) $(BRIDGE_VENV) build *.egg-info .pytest_cache
