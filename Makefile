# Two entry points (see README): `make demo` runs the whole pipeline on the real data, `make test` runs the tests.
# Both create ./.venv on first use. Override the interpreter with PYTHON=python3.x, the data with DATA=...
PYTHON ?= python3
VENV := .venv
# `edgecls serve` runs Triton Inference Server through nvidia-pytriton, in a venv of its own (README: Serving): PyTriton
# needs numpy < 2, and its Python-backend stub loads the system's libpython, so that venv is made from the system's own
# interpreter (a Python built elsewhere, like pyenv's, failed binding models). Empty where none exists: serving is then
# skipped, and `edgecls doctor` says why.
SERVE_VENV := .venv-serve
SERVE_PYTHON ?= $(firstword $(wildcard /usr/bin/python3.12 /usr/bin/python3.11 /usr/bin/python3.10))
DATA ?= ../shared/data/cifar10-jpeg.tar.gz

$(VENV)/installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# PyTorch first, pinned: the versions these machines (and CI) have on disk.
	$(VENV)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install --quiet -e '.[train,test,report,client,video]'
	# TensorRT 10.x type stubs for the API contract test: unpacked beside the venv, not into it (tools/api/README.md)
	$(VENV)/bin/pip install --quiet --no-deps --upgrade --target $(VENV)/api-stubs/tensorrt-stubs tensorrt-stubs==10.13.0.35.1
	touch $@

# The serving venv: edgecls with its `serve` extra (nvidia-pytriton, numpy < 2), no PyTorch. `edgecls serve` (from
# ./.venv) runs the server with this venv's interpreter.
$(SERVE_VENV)/installed: pyproject.toml
ifeq ($(SERVE_PYTHON),)
	@echo "make: no system python3.10-3.12 in /usr/bin, so no $(SERVE_VENV): edgecls serve and its tests are skipped (apt install python3.11-venv, or SERVE_PYTHON=...)"
else
	$(SERVE_PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install --quiet --upgrade pip
	$(SERVE_VENV)/bin/pip install --quiet -e '.[serve]'
	touch $@
endif

.PHONY: install serve-venv test demo mutation contract-mutants
install: $(VENV)/installed $(SERVE_VENV)/installed

serve-venv: $(SERVE_VENV)/installed

# Two pytest-xdist workers (the CI machine has two cores): while one waits on a subprocess, a server or a lock, the
# other computes. --dist loadfile keeps a file's tests in one worker, so its module fixtures (a server, an int8
# search) are made once; the session's trained checkpoints and exports are made once for both (conftest.made_once).
test: install
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile

demo: install
	DATA=$(DATA) VENV=$(VENV) bash scripts/demo.sh

# Mutation testing, not run by CI: mutmut makes one small change at a time to the core modules ([tool.mutmut] in
# pyproject.toml) and runs the fast unit tests that reach the changed function; a change they still pass (survived) is
# a bug they would miss. A fresh run each time (about 10,000 mutants, 20 minutes on two quiet cores;
# `mutmut run "edgecls.formats*"` runs one module); `mutmut show NAME` shows a mutant.
# The kill rate counts a timed-out mutant as caught (the change made the tests hang). OMP_NUM_THREADS=1: mutmut forks
# each mutant's run from a process where PyTorch has already run, and a forked OpenMP thread pool hangs.
mutation: $(VENV)/installed
	$(VENV)/bin/python -c 'import mutmut' 2>/dev/null || $(VENV)/bin/pip install --quiet -e '.[mutation]'
	rm -rf mutants
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run
	$(VENV)/bin/mutmut results
	$(VENV)/bin/mutmut export-cicd-stats
	$(VENV)/bin/python -c 'import json; s = json.load(open("mutants/mutmut-cicd-stats.json")); print("{killed} killed, {timeout} timed out, {survived} survived, {no_tests} without tests, of {total} mutants: kill rate {rate:.1f}%".format(rate=100 * (s["killed"] + s["timeout"]) / s["total"], **s))'

# The API contract proved by mutation (tools/api/mutate_contract.py): one-line bugs in the TensorRT / CUDA modules,
# each of which tests/test_api_contract.py must fail. Not run by CI (about four minutes on two cores).
contract-mutants: $(VENV)/installed
	$(VENV)/bin/python tools/api/mutate_contract.py --json results/contract-mutants.json
