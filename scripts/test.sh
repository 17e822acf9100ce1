#!/usr/bin/env bash
# The project's one test command (README, .ci/run): installs what the tests
# need on a fresh machine, then runs formatting, lints and every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
