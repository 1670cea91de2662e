# Two commands from nothing: `make demo` and `make test` (each creates .venv).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.safnet-installed
# DDS discovery stays on this machine (tests and demo talk over loopback only).
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp

.PHONY: demo test lint venv clean bench

$(STAMP): requirements.txt setup.py scripts/setup_env.sh scripts/build_tf2_msgs.sh $(wildcard interfaces/*/*) $(wildcard interfaces/*/msg/*)
	VENV=$(VENV) bash scripts/setup_env.sh
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/safnet demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(VENV)/bin/safnet bench model

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
