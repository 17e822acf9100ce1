#!/usr/bin/env bash
# Installs the programs the tests use, when they are missing: the age and
# zstd command-line tools (the stock-tools restore test) and sqlite3 (the
# benchmark's reference pipeline), and libduckdb.so (below). Idempotent and quiet.
set -euo pipefail
if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
need=()
for tool in age zstd sqlite3; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# libduckdb.so: offsite loads it at run time to check restored DuckDB
# databases, and the tests use it to create them and to hold a writer's lock.
# DuckDB's npm package for Node ships the library; npm is the package client
# this machine has for it.
DUCKDB_NPM="@duckdb/node-bindings-linux-x64@1.5.6-r.1"
ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
if ! "$ldconfig" -p | grep -q 'libduckdb\.so '; then
  echo "installing libduckdb.so from $DUCKDB_NPM" >&2
  command -v npm >/dev/null 2>&1 || {
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq npm >/dev/null
  }
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$DUCKDB_NPM" >/dev/null && tar xzf ./*.tgz package/libduckdb.so)
  $sudo install -m 0644 "$tmp/package/libduckdb.so" /usr/local/lib/libduckdb.so
  $sudo "$ldconfig"
  rm -rf "$tmp"
fi
