#!/usr/bin/env bash
# Run pgdr's tests: unit tests plus integration tests against real PostgreSQL clusters
# (made by the tests), the real S3-compatible server (moto, started by the tests) and
# the real pgdr binary; then every fuzz target over its committed corpus for a fixed,
# seeded number of runs (scripts/fuzz.sh --ci). Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --release --all-targets -- --test-threads="${PGDR_TEST_THREADS:-4}"
scripts/fuzz.sh --ci
