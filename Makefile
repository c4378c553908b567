# The two commands of the README. Both set up .venv first (scripts/bootstrap.sh).
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: run test bootstrap gpu-check clean

run: bootstrap
	$(VENV)/bin/capsid pipeline --tokenizer capsid rqkmeans --seeds 0 1 2

test: bootstrap
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

bootstrap:
	@bash scripts/bootstrap.sh

clean:
	rm -rf build *.egg-info capsid_kernels/_C*.so
