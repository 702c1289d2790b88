# `make demo` and `make test` each create .venv when missing, install MedSynth into it, and run.
# `make benchmark` runs the research harness beside the package (benchmarks/, `python -m benchmarks`) and regenerates
# docs/benchmarks.md and its figures (hours on a CPU; resumes from the per-fold result files kept in
# docs/benchmark_results/runs). The README's short table is checked against those files by tests/test_docs_tables.py.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
BENCHMARK_DATA ?= ../shared/data
BENCHMARK_OUT ?= docs/benchmark_results
STAMP := $(VENV)/.installed-$(shell cksum setup.py | cut -d' ' -f1)

.PHONY: install demo test benchmark clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch is pinned in the same pip command as everything else: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --progress-bar off torch==2.13.0 -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medsynth demo --out demo_output

test: $(STAMP)
	bash .ci/install_orthanc.sh
	$(PY) -m pytest -q -o faulthandler_timeout=900 tests

benchmark: $(STAMP)
	$(PY) -m benchmarks --studies $(BENCHMARK_DATA) --out $(BENCHMARK_OUT) --secondary --report docs/benchmarks.md

clean:
	rm -rf $(VENV) demo_output .pytest_cache
