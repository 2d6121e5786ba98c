#!/usr/bin/env bash
# Benchmark, not a test: pgdr logical backup/restore side by side with the references,
# in one run, on one pgbench database (scale ${SCALE:-50}, about 750 MB).
#   floor:   pg_dump -Fc -Z0 > /dev/null
#   gzip:    pg_dump -Fc > file
#   pgdr:    backup --kind logical to the local repository and to the S3 server (moto)
#   restore: pg_restore from the plain (-Z0) file, against pgdr restore
# Prints wall time, peak RSS and stored size of each, and the ratios to the targets.
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
bench_setup
scale=${SCALE:-50}
bench_cluster
echo "== pgbench -i -s $scale"
psql_q -d postgres -c "CREATE DATABASE bench"
"$bindir/pgbench" -i -q -s "$scale" -p "$port" bench 2>/dev/null
psql_q -d bench -c "VACUUM ANALYZE"

# pgdr configs: local and S3 (moto on a free port).
"$pgdr" init --generate-key "$work/repo.key" >/dev/null
s3port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$s3port" >/dev/null 2>&1 &
for _ in $(seq 50); do curl -s "http://127.0.0.1:$s3port" >/dev/null 2>&1 && break; sleep 0.2; done
curl -s -X PUT "http://127.0.0.1:$s3port/bench" >/dev/null
for kind in local s3; do
  if [ $kind = local ]; then repo="url = \"file://$work/repo\""; else
    repo="url = \"s3://bench/pgdr\"
endpoint = \"http://127.0.0.1:$s3port\"
region = \"us-east-1\"
force_path_style = true"; fi
  cat > "$work/pgdr-$kind.toml" <<TOML
cluster = "bench"
[postgres]
url = "postgresql://postgres@127.0.0.1:$port/postgres"
bin_dir = "$bindir"
[repository]
$repo
key_file = "$work/repo.key"
compress_level = 3
TOML
done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
PGDR_CONFIG="$work/pgdr-local.toml" "$pgdr" init >/dev/null
PGDR_CONFIG="$work/pgdr-s3.toml" "$pgdr" init >/dev/null

echo "== backups"
timed "pg_dump -Fc -Z0 >/dev/null (floor)" - sh -c "'$bindir/pg_dump' -Fc -Z0 -p $port bench > /dev/null"
timed "pg_dump -Fc -Z0 > file" "$work/plain.dump" sh -c "'$bindir/pg_dump' -Fc -Z0 -p $port bench > '$work/plain.dump'"
timed "pg_dump -Fc (gzip) > file" "$work/gzip.dump" sh -c "'$bindir/pg_dump' -Fc -p $port bench > '$work/gzip.dump'"
timed "pgdr backup (local)" "$work/repo" env PGDR_CONFIG="$work/pgdr-local.toml" "$pgdr" backup --kind logical --database bench
timed "pgdr backup (s3)" - env PGDR_CONFIG="$work/pgdr-s3.toml" "$pgdr" backup --kind logical --database bench

echo "== restores"
psql_q -d postgres -c "CREATE DATABASE r_ref" -c "CREATE DATABASE r_pgdr"
timed "pg_restore from plain file" - "$bindir/pg_restore" -p "$port" -d r_ref "$work/plain.dump"
timed "pgdr restore (local)" - env PGDR_CONFIG="$work/pgdr-local.toml" "$pgdr" restore --database bench --to-database r_pgdr
a=$(psql_q -d r_ref -c "SELECT md5(string_agg(a::text, '|' ORDER BY aid)) FROM pgbench_accounts a")
b=$(psql_q -d r_pgdr -c "SELECT md5(string_agg(a::text, '|' ORDER BY aid)) FROM pgbench_accounts a")
[ "$a" = "$b" ] || { echo "restored data differs!" >&2; exit 1; }

floor=$(col "pg_dump -Fc -Z0 >/dev/null (floor)" 2)
gz=$(col "pg_dump -Fc (gzip) > file" 4)
repo_size=$(col "pgdr backup (local)" 4)
echo
echo "== ratios (targets in brackets)"
echo "pgdr backup local / floor wall:     $(ratio "$(col 'pgdr backup (local)' 2)" "$floor")   [<= 1.15]"
echo "pgdr backup s3 / floor wall:        $(ratio "$(col 'pgdr backup (s3)' 2)" "$floor")   [<= 1.15]"
echo "pgdr stored / pg_dump gzip size:    $(ratio "$repo_size" "$gz")   [<= 1.00]"
echo "pgdr restore / pg_restore wall:     $(ratio "$(col 'pgdr restore (local)' 2)" "$(col 'pg_restore from plain file' 2)")   [<= 1.15]"
echo "pgdr peak RSS backup local / s3:    $(( $(col 'pgdr backup (local)' 3) / 1024 )) / $(( $(col 'pgdr backup (s3)' 3) / 1024 )) MiB   [<= 64]"
echo "pgdr peak RSS restore:              $(( $(col 'pgdr restore (local)' 3) / 1024 )) MiB   [<= 64]"
