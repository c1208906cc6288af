# The two commands a newcomer needs: `make demo` and `make test`. Both install what is missing
# (idempotently, a no-op when present) and share one cargo target directory outside the clone,
# so CI runs on the same machine are incremental.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := test

CACHE ?= $(HOME)/.cache/connector
export CARGO_TARGET_DIR ?= $(CACHE)/target
# DuckDB's official shared library, shipped inside the npm registry's node bindings package.
# Linking it instead of compiling DuckDB's C++ (the `bundled` feature, used for Windows
# release builds) turns a ~1 hour cold build into minutes.
DUCKDB_VERSION := 1.5.6
DUCKDB_NPM := @duckdb/node-bindings-linux-x64@$(DUCKDB_VERSION)-r.1
export DUCKDB_LIB_DIR ?= $(CACHE)/duckdb-$(DUCKDB_VERSION)
# Only x86_64 Linux has that exact DuckDB build on npm; elsewhere compile DuckDB (slow, once).
# The tray app (GTK, app indicator) is built and tested too: its test drives it over D-Bus.
ifneq ($(shell uname -m),x86_64)
FEATURES := --features bundled,tray
else
FEATURES := --features tray
endif
BIN := $(CARGO_TARGET_DIR)/debug
DEMO_DIR ?= $(CACHE)/demo
DEMO_PORT ?= 8080
# A throwaway PostgreSQL on loopback, for the rejected-credentials test through psqlODBC.
export CONNECTOR_TEST_PG_PORT ?= 54329
PG_DIR ?= /var/tmp/connector-test-pg
# A real S3-compatible server process on loopback (moto's server), and pyarrow to read the
# published Parquet as a stranger would: both from PyPI into a virtualenv in the cache.
VENV ?= $(CACHE)/venv
# moto pinned: 5.2.6 (2026-12) answers 403 to a read-only key's HEAD and multipart listing,
# which its IAM policy allows (store_credentials tests), where 5.2.5 does not.
MOTO_VERSION := 5.2.5
PY_PACKAGES := "moto[server]==$(MOTO_VERSION)" "pyarrow>=15" \
	"schemathesis==4.32.5" "openapi-python-client==0.29.1" "openapi-spec-validator==0.9.0"
S3_DIR ?= /var/tmp/connector-test-s3
export CONNECTOR_TEST_S3_PORT ?= 54330
export CONNECTOR_TEST_S3_ENDPOINT ?= http://127.0.0.1:$(CONNECTOR_TEST_S3_PORT)
export CONNECTOR_TEST_PYTHON ?= $(VENV)/bin/python
# Client developers' tools from npm (the TypeScript generator and compiler), and the reference
# page's renderer: Redoc's standalone bundle, built into the server (`/docs`) from this file.
NODE_TOOLS ?= $(CACHE)/npm
NPM_PACKAGES := openapi-typescript@7.13.0 typescript@5.9.3
REDOC_VERSION := 2.5.4
export CONNECTOR_TEST_NODE_MODULES ?= $(NODE_TOOLS)/node_modules
export CONNECTOR_REDOC_JS ?= $(CACHE)/redoc-$(REDOC_VERSION)/redoc.standalone.js

APT_PACKAGES := build-essential pkg-config unixodbc unixodbc-dev libsqliteodbc odbc-postgresql \
	postgresql sqlite3 python3 python3-venv time npm curl chromium chromium-driver \
	libgtk-3-dev libayatana-appindicator3-dev xvfb dbus-daemon xauth trayer xdotool imagemagick x11-utils x11-xserver-utils openssl

.PHONY: deps duckdb venv npm build test lint demo bench-extract bench-normalise bench-sync bench-api bench-many bench-fuzz bench-link pg-up pg-down s3-up s3-down

deps:
	@command -v cargo >/dev/null || { echo "cargo is missing: install Rust 1.89 or later (rustup) with rustfmt and clippy"; exit 1; }
	@missing=""; for p in $(APT_PACKAGES); do \
	  if [ "$$p" = npm ] && command -v npm >/dev/null; then continue; fi; \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@$(MAKE) --no-print-directory duckdb venv npm

venv:
	@if [ ! -x "$(VENV)/bin/moto_server" ] || [ ! -x "$(VENV)/bin/schemathesis" ] || [ ! -x "$(VENV)/bin/openapi-python-client" ] \
	  || ! "$(VENV)/bin/python" -c "import pyarrow" 2>/dev/null \
	  || ! "$(VENV)/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('moto') != '$(MOTO_VERSION)')" 2>/dev/null; then \
	  echo "Installing the test S3 server, pyarrow and the API client tools into $(VENV)"; \
	  python3 -m venv "$(VENV)" && "$(VENV)/bin/pip" install -q --disable-pip-version-check $(PY_PACKAGES); \
	fi

npm:
	@if [ ! -x "$(NODE_TOOLS)/node_modules/.bin/openapi-typescript" ] || [ ! -x "$(NODE_TOOLS)/node_modules/.bin/tsc" ]; then \
	  echo "Installing $(NPM_PACKAGES) into $(NODE_TOOLS)"; \
	  mkdir -p "$(NODE_TOOLS)" && npm install --silent --no-audit --no-fund --prefix "$(NODE_TOOLS)" $(NPM_PACKAGES) >/dev/null; \
	fi
	@if [ ! -f "$(CONNECTOR_REDOC_JS)" ]; then \
	  echo "Fetching Redoc $(REDOC_VERSION)'s standalone bundle into $$(dirname $(CONNECTOR_REDOC_JS))"; \
	  tmp=$$(mktemp -d) && (cd $$tmp && npm pack --silent redoc@$(REDOC_VERSION) >/dev/null && tar xzf *.tgz) && \
	  mkdir -p "$$(dirname $(CONNECTOR_REDOC_JS))" && cp $$tmp/package/bundles/redoc.standalone.js \
	    $$tmp/package/bundles/redoc.standalone.js.LICENSE.txt "$$(dirname $(CONNECTOR_REDOC_JS))/" && rm -rf $$tmp; \
	fi

duckdb:
	@if [[ "$(FEATURES)" != *bundled* ]] && [ ! -f "$(DUCKDB_LIB_DIR)/libduckdb.so" ]; then \
	  echo "Fetching libduckdb $(DUCKDB_VERSION) into $(DUCKDB_LIB_DIR)"; \
	  tmp=$$(mktemp -d) && (cd $$tmp && npm pack --silent $(DUCKDB_NPM) >/dev/null && tar xzf *.tgz) && \
	  mkdir -p "$(DUCKDB_LIB_DIR)" && cp $$tmp/package/libduckdb.so "$(DUCKDB_LIB_DIR)/" && rm -rf $$tmp; \
	fi

build: deps
	cargo build --all-targets $(FEATURES)

lint: deps
	cargo fmt --check
	cargo clippy --all-targets $(FEATURES) -- -D warnings

test: deps lint
	@bash .ci/pg.sh up "$(PG_DIR)" "$(CONNECTOR_TEST_PG_PORT)"
	@bash .ci/s3.sh up "$(S3_DIR)" "$(CONNECTOR_TEST_S3_PORT)" "$(VENV)"
	@status=0; cargo test --lib --tests $(FEATURES) || status=$$?; \
	  bash .ci/pg.sh down "$(PG_DIR)" "$(CONNECTOR_TEST_PG_PORT)"; \
	  bash .ci/s3.sh down "$(S3_DIR)" "$(CONNECTOR_TEST_S3_PORT)" "$(VENV)"; exit $$status

pg-up:
	@bash .ci/pg.sh up "$(PG_DIR)" "$(CONNECTOR_TEST_PG_PORT)"

pg-down:
	@bash .ci/pg.sh down "$(PG_DIR)" "$(CONNECTOR_TEST_PG_PORT)"

s3-up: venv
	@bash .ci/s3.sh up "$(S3_DIR)" "$(CONNECTOR_TEST_S3_PORT)" "$(VENV)"

s3-down:
	@bash .ci/s3.sh down "$(S3_DIR)" "$(CONNECTOR_TEST_S3_PORT)" "$(VENV)"

demo: build venv
	@rm -rf "$(DEMO_DIR)" && mkdir -p "$(DEMO_DIR)"
	@echo "== Generating a sample Sage 50 company in $(DEMO_DIR)/company"
	@$(BIN)/sage50-sim --out "$(DEMO_DIR)/company" --seed 42 --transactions 20000 > "$(DEMO_DIR)/odbc.txt"
	@echo "   ODBC connection string: $$(cat $(DEMO_DIR)/odbc.txt)"
	@echo "== Extracting it through the SQLite3 ODBC driver into $(DEMO_DIR)/staging.duckdb"
	@$(BIN)/connector extract --odbc "$$(cat $(DEMO_DIR)/odbc.txt)" --staging "$(DEMO_DIR)/staging.duckdb" \
	  --verify-counts | tee "$(DEMO_DIR)/extract.txt"
	@echo "== Rows staged next to rows in the Sage source, counted by sqlite3 itself"
	@bash .ci/compare-counts.sh "$(DEMO_DIR)/company/ACCDATA/SAGE50.DB" "$(DEMO_DIR)/extract.txt"
	@echo "== Normalising: the SQL rules in sql/ into our data types, then every check in sql/checks/"
	@$(BIN)/connector rules run --staging "$(DEMO_DIR)/staging.duckdb" --out "$(DEMO_DIR)/normalised.duckdb"
	@echo "== The rule test cases (fixtures/rules/*.case)"
	@$(BIN)/connector rules test --cases fixtures/rules
	@echo "== The one-command sync: extract, normalise, snapshot, publish to the local store $(DEMO_DIR)/state/store"
	@$(BIN)/connector sync --odbc "$$(cat $(DEMO_DIR)/odbc.txt)" --company demo --state-dir "$(DEMO_DIR)/state"
	@echo "== Syncing again with nothing changed in Sage: only a manifest and the pointer are written"
	@$(BIN)/connector sync --odbc "$$(cat $(DEMO_DIR)/odbc.txt)" --company demo --state-dir "$(DEMO_DIR)/state" | tail -n 2
	@echo "== The snapshot it published, re-read and checked: every file's size, SHA-256 and row count"
	@$(BIN)/connector snapshot verify "file://$(DEMO_DIR)/state/store" demo
	@echo "== pyarrow, knowing nothing of the connector, reads the published invoices"
	@$(CONNECTOR_TEST_PYTHON) .ci/read-snapshot.py "$(DEMO_DIR)/state/store" demo invoices
	@echo "== Linking, as a Sage user meets it: the API client's link URL, the link page, the connector's settings page"
	@bash .ci/demo-link.sh "$(BIN)" "$(DEMO_DIR)"
	@echo "== The server: an API client, a company created through the API, the sample company synced into it"
	@bash .ci/demo-server.sh "$(BIN)" "$(DEMO_DIR)" "$(DEMO_PORT)"
	@echo "== The tray app under Xvfb (a virtual screen with a system tray): linked, synced, its menu opened"
	@bash .ci/demo-tray.sh "$(BIN)" "$(DEMO_DIR)"

bench-extract: build
	@bash benches/extract.sh

bench-normalise: build
	@bash benches/normalise.sh

bench-sync: build
	@bash .ci/s3.sh up "$(S3_DIR)" "$(CONNECTOR_TEST_S3_PORT)" "$(VENV)"
	@status=0; bash benches/sync.sh || status=$$?; \
	  bash .ci/s3.sh down "$(S3_DIR)" "$(CONNECTOR_TEST_S3_PORT)" "$(VENV)"; exit $$status

bench-api: build
	@bash benches/api.sh

# 1,000 companies of 20,000 transactions on one node within --memory-limit 4GB: first ingest,
# restart, query (a) on cold and hot companies, peak RSS (COMPANIES=, TRANSACTIONS=, BUDGET=).
bench-many: build
	@bash benches/many.sh

# 100,000 generated queries (over every data type) and 100,000 mutated manifests and pointers
# against the real parser and a real DuckDB: no panic, no SQL error a client would see as a
# 500. `make test` runs 3,000 of each; CONNECTOR_FUZZ_SEED replays a printed failure.
bench-fuzz: deps
	@CONNECTOR_FUZZ_CASES=$${CONNECTOR_FUZZ_CASES:-100000} cargo test --lib $(FEATURES) server::fuzz -- --nocapture

bench-link: build
	@bash benches/link.sh
