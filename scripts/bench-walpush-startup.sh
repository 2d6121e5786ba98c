#!/usr/bin/env bash
# Benchmark, not a test: the cost of one `pgdr wal-push` call on a segment that is
# already archived (PostgreSQL retries after a crash; every call pays start-up: config,
# key, repo.json, the spool check, a HEAD and a read-back compare). Runs CALLS (200)
# calls of this build and, if BENCH_BEFORE names another pgdr binary, of that one, in one
# run on the same segment, and prints milliseconds per call and the ratio.
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
bench_setup
calls=${CALLS:-200}
mkdir -p "$work/pgdr-repo"
"$pgdr" init --generate-key "$work/repo.key" >/dev/null
cat > "$work/pgdr.toml" <<TOML
cluster = "bench"
[postgres]
url = "postgresql://postgres@127.0.0.1:$port/postgres"
bin_dir = "$bindir"
[repository]
url = "file://$work/pgdr-repo"
key_file = "$work/repo.key"
TOML
bench_cluster
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$work"
as_pg "$pgdr" --config "$work/pgdr.toml" init >/dev/null
seg=$(psql_q -d postgres -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
psql_q -d postgres -c "SELECT pg_switch_wal()" >/dev/null
path="$work/data/pg_wal/$seg"
as_pg "$pgdr" --config "$work/pgdr.toml" wal-push "$path"

per_call() {  # per_call BINARY → ms per call
  local bin=$1 start end
  start=$(date +%s%N)
  for _ in $(seq "$calls"); do
    "${pgrun[@]}" "$bin" --config "$work/pgdr.toml" wal-push "$path"
  done
  end=$(date +%s%N)
  python3 -c "print(f'{($end - $start) / 1e6 / $calls:.2f}')"
}
now=$(per_call "$pgdr")
echo "wal-push of an archived segment, this build:   $now ms per call ($calls calls)"
if [ -n "${BENCH_BEFORE:-}" ]; then
  before=$(per_call "$BENCH_BEFORE")
  echo "wal-push of an archived segment, $BENCH_BEFORE: $before ms per call"
  echo "ratio this/before: $(ratio "$now" "$before")"
fi
