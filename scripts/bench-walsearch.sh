#!/usr/bin/env bash
# Benchmark, not a test: `pgdr wal-search` over SEGMENTS (default 64, 1 GiB) of pgbench
# WAL archived by `pgdr wal-push` into a local repository (zstd + AES-256-GCM), against
# the floor: PostgreSQL's own `pg_waldump` over the same WAL still in pg_wal (plain
# files, no fetching, no decryption, no parsing of its output), with the same record
# filters. Prints wall time, peak RSS and the ratio, and checks the search found the loss.
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
bench_setup
segments=${SEGMENTS:-64}
"$pgdr" init --generate-key "$work/repo.key" >/dev/null
mkdir -p "$work/pgdr-repo"
cat > "$work/pgdr.toml" <<TOML
cluster = "bench"
[postgres]
url = "postgresql://postgres@127.0.0.1:$port/postgres"
bin_dir = "$bindir"
data_dir = "$work/data"
[repository]
url = "file://$work/pgdr-repo"
key_file = "$work/repo.key"
TOML
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$work"
bench_cluster "archive_mode=on" "archive_command='$pgdr --config $work/pgdr.toml wal-push %p'" \
  "wal_keep_size=4GB" "max_wal_size=4GB" "fsync=off"
as_pg "$pgdr" --config "$work/pgdr.toml" init >/dev/null
"$bindir/pgbench" -i -q -s 10 -p "$port" postgres >/dev/null 2>&1
psql_q -d postgres -c "CREATE TABLE victim (id int PRIMARY KEY, v text);
  INSERT INTO victim SELECT g, md5(g::text) FROM generate_series(1, 100000) g;"
as_pg "$pgdr" --config "$work/pgdr.toml" backup --kind physical >/dev/null
start=$(psql_q -d postgres -c "SELECT pg_current_wal_lsn()")
target_seg=$(( $(psql_q -d postgres -c "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 17, 8))::bit(32)::int") + segments ))
half=$(( segments / 2 ))
wal_at() { psql_q -d postgres -c "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 17, 8))::bit(32)::int"; }
echo "writing $segments segments of pgbench WAL, with a DELETE half-way ..."
first=$(wal_at)
while [ "$(wal_at)" -lt $(( first + half )) ]; do "$bindir/pgbench" -n -c 2 -t 2000 -p "$port" postgres >/dev/null 2>&1; done
xid=$(psql_q -d postgres -c "BEGIN; DELETE FROM victim WHERE id % 7 = 0; SELECT txid_current(); COMMIT;" | grep -E '^[0-9]+$')
while [ "$(wal_at)" -lt "$target_seg" ]; do "$bindir/pgbench" -n -c 2 -t 2000 -p "$port" postgres >/dev/null 2>&1; done
last=$(psql_q -d postgres -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
psql_q -d postgres -c "SELECT pg_switch_wal()" >/dev/null
end=$(psql_q -d postgres -c "SELECT pg_current_wal_lsn()")
until [ "$(psql_q -d postgres -c "SELECT coalesce(last_archived_wal, '') >= '$last' FROM pg_stat_archiver")" = t ]; do sleep 0.2; done
n=$(ls "$work/pgdr-repo/bench/wal/"*/ | grep -c '^0000')
echo "archived: $n segments; repository $(du -sh "$work/pgdr-repo" | cut -f1), the same WAL in pg_wal $(du -sh "$work/data/pg_wal" | cut -f1)"
filters=(--rmgr=Transaction --rmgr=Storage --rmgr=Heap --rmgr=Heap2 --rmgr=XLOG)
timed "pg_waldump over pg_wal (floor)" - "${pgrun[@]}" "$bindir/pg_waldump" -p "$work/data/pg_wal" \
  --start "$start" --end "$end" "${filters[@]}"
timed "pgdr wal-search (repository)" - "$pgdr" --config "$work/pgdr.toml" --json wal-search \
  --table public.victim --deleted
found=$(python3 -c "import json,sys; r=json.load(open('$work/out.$$')); print(' '.join(str(m['xid']) for m in r['matches']))")
[ "$found" = "$xid" ] || { echo "wal-search found [$found], the DELETE was xid $xid" >&2; exit 1; }
echo "found the DELETE: xid $xid"
echo "ratio wal-search / pg_waldump floor: wall $(ratio "$(col "pgdr wal-search (repository)" 2)" "$(col "pg_waldump over pg_wal (floor)" 2)")"
