#!/usr/bin/env bash
# Installs the programs the tests use, when they are missing: the age and
# zstd command-line tools (the stock-tools restore test) and sqlite3 (the
# benchmark's reference pipeline). Idempotent and quiet.
set -euo pipefail
need=()
for tool in age zstd sqlite3; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
