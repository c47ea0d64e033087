# Two entry points for a fresh machine: `make demo` runs a LaneExperiment locally on
# synthetic data, `make test` runs the whole suite. Both build .venv from pinned packages.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.lanex-installed

.PHONY: venv ui-assets system horovod azurite cluster-binaries cluster cluster-down test demo bench clean

$(STAMP): pyproject.toml requirements/lock.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade 'pip==25.3'
	$(PIP) install -q -c requirements/lock.txt -e '.[trainer,operator,dev]'
	touch $@

venv: $(STAMP) ui-assets

# `lanex ui`'s one front-end library (uPlot), pinned by ui/package-lock.json and copied into the Python
# package; the copy is committed too, so an install without npm (pip, the operator image) serves it.
UI_VENDOR := operator/lanex_operator/ui/static/vendor
ui-assets: $(UI_VENDOR)/uPlot.iife.min.js

$(UI_VENDOR)/uPlot.iife.min.js: ui/package-lock.json
	npm ci --prefix ui --no-audit --no-fund
	cp ui/node_modules/uplot/dist/uPlot.iife.min.js ui/node_modules/uplot/dist/uPlot.min.css $(UI_VENDOR)/
	touch $@

# Debian packages the tests use: Open MPI for mpirun/horovodrun, Chromium for the `lanex ui` browser tests.
system:
	@command -v mpirun >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1 || bash scripts/install_system_packages.sh

horovod: venv system
	bash scripts/build_horovod.sh $(PY)

# Azurite (npm), the Azure Storage emulator the Blob download tests run against.
azurite:
	bash scripts/install_azurite.sh

# The real control plane (tools/cluster): upstream kube-apiserver, etcd, controllers and kwok,
# built from the Go modules in tools/k8s into ~/.cache/lanex/k8s (LANEX_K8S_CACHE), keyed by go.sum.
CLUSTER := PYTHONPATH=tools/cluster $(PY) -m lanex_cluster

cluster-binaries: venv
	PYTHONPATH=tools/cluster $(PY) -m lanex_cluster.build

cluster: cluster-binaries
	$(CLUSTER) up

cluster-down: venv
	$(CLUSTER) down

test: venv system horovod azurite cluster-binaries
	$(PY) scripts/run_tests.py

demo: venv
	$(VENV)/bin/lanex run examples/quickstart.yaml

bench: venv
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .lanex .cluster
