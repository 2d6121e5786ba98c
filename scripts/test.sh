#!/usr/bin/env bash
# Run pgdr's tests: unit tests plus integration tests against real PostgreSQL clusters
# (made by the tests), the real S3-compatible server (moto, started by the tests) and
# the real pgdr binary; then every fuzz target over its committed corpus for a fixed,
# seeded number of runs (scripts/fuzz.sh --ci). Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The tests start and kill thousands of short-lived processes (servers, psql, pgdr).
# With the default pid_max of 32768 a PID comes round again within minutes, and a
# killed server's stale postmaster.pid can then name an unrelated process that
# pg_ctl signals. Give PIDs room (as root; otherwise say so and go on).
if [ "$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 0)" -lt 4194304 ]; then
    if [ "$(id -u)" = 0 ] && echo 4194304 > /proc/sys/kernel/pid_max 2>/dev/null; then
        echo "test.sh: kernel.pid_max raised to 4194304"
    else
        echo "test.sh: kernel.pid_max is $(cat /proc/sys/kernel/pid_max 2>/dev/null); raise it to 4194304 (sysctl) if a test sees a process killed from outside" >&2
    fi
fi
cargo test --release --all-targets -- --test-threads="${PGDR_TEST_THREADS:-4}"
scripts/fuzz.sh --ci
