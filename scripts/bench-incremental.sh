#!/usr/bin/env bash
# Benchmark, not a test: incremental physical backups, pgdr against pgBackRest (Debian's
# package) on the same pgbench database (scale ${SCALE:-100}), in one run.
#   pgBackRest: posix repo, block incremental (repo-block=y, repo-bundle=y; beta=y in 2.45), zst 3,
#               aes-256-cbc, process-max 2, --type=incr
#   pgdr:       local repository, zstd 3, AES-256-GCM, --jobs 2, --type incr (changed
#               blocks read from the archived WAL)
# Both archive every segment (archive_command runs both tools). Steps:
#   1. a full backup with each tool;
#   2. ${ROUNDS:-6} rounds of change, each followed by one incremental with each tool: a
#      random UPDATE of the rows on about 1 % of pgbench_accounts' pages, plus a new
#      table of 10 000 rows. The first round's incremental is the one measured for
#      size and time (the median of all rounds is printed too);
#   3. restore of each tool's chain (the full and its incrementals) with
#      --target immediate, and pgdr's restore of a full backup of the same data.
# Prints wall time, peak RSS, stored size, and the ratios against the targets.
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
bench_setup
scale=${SCALE:-100}
rounds=${ROUNDS:-6}
command -v pgbackrest >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest >/dev/null; }

mkdir -p "$work/pgdr-repo" "$work/pgbr-repo" "$work/pgbr-log" "$work/pgbr-spool" "$work/pgdr-spool"
"$pgdr" init --generate-key "$work/repo.key" >/dev/null
cat > "$work/pgdr.toml" <<TOML
cluster = "bench"
[postgres]
url = "postgresql://postgres@127.0.0.1:$port/postgres"
bin_dir = "$bindir"
data_dir = "$work/data"
[repository]
url = "file://$work/pgdr-repo"
key_file = "$work/repo.key"
compress_level = 3
[wal]
spool_dir = "$work/pgdr-spool"
push_parallel = 4
archive_timeout = 600
TOML
cat > "$work/pgbackrest.conf" <<CONF
[global]
repo1-path=$work/pgbr-repo
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=bench-passphrase-not-secret
repo1-block=y
repo1-bundle=y
beta=y
compress-type=zst
compress-level=3
process-max=2
log-path=$work/pgbr-log
lock-path=$work/pgbr-log
spool-path=$work/pgbr-spool
log-level-console=warn
start-fast=y

[bench]
pg1-path=$work/data
pg1-port=$port
pg1-socket-path=$work/sock
CONF
pgdr_cmd="$pgdr --config $work/pgdr.toml"
pgbr_cmd="pgbackrest --config=$work/pgbackrest.conf --stanza=bench"
bench_cluster "archive_mode=on" "max_wal_size=4GB" "checkpoint_timeout=30min"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$work"
as_pg "$pgdr" --config "$work/pgdr.toml" init >/dev/null
# Both tools archive every segment: each needs the WAL of its own backups.
psql_q -d postgres -c "ALTER SYSTEM SET archive_command = '$pgdr_cmd wal-push %p && $pgbr_cmd archive-push %p'" \
  -c "SELECT pg_reload_conf()" >/dev/null
as_pg $pgbr_cmd stanza-create >/dev/null

echo "== pgbench -i -s $scale"
psql_q -d postgres -c "CREATE DATABASE bench"
"$bindir/pgbench" -i -q -s "$scale" -p "$port" bench 2>/dev/null
psql_q -d bench -c "VACUUM ANALYZE" -c "CHECKPOINT"
pages=$(psql_q -d bench -c "SELECT relpages FROM pg_class WHERE relname = 'pgbench_accounts'")

echo "== full backups"
timed "pgdr full" "$work/pgdr-repo/bench/backups" "${pgrun[@]}" $pgdr_cmd backup --kind physical --type full --jobs 2
timed "pgbackrest full" "$work/pgbr-repo/backup" "${pgrun[@]}" $pgbr_cmd backup --type=full

# One round of change: the rows on about 1 % of the accounts' pages (chosen by a
# per-round hash of the block number), and a new table.
change() {
  local r=$1
  psql_q -d bench -c "UPDATE pgbench_accounts SET abalance = abalance + 1
      WHERE (((ctid::text::point)[0]::bigint * 7919 + $r * 104729) % 100) = 0" \
    -c "CREATE TABLE round_$r AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 10000) g" >/dev/null
}
size_of() { du -sb "$1" | awk '{print $1}'; }

echo "== $rounds rounds: change about 1 % of $pages pages, then an incremental with each tool"
for r in $(seq "$rounds"); do
  change "$r"
  before=$(size_of "$work/pgdr-repo/bench/backups")
  timed "pgdr incr $r" - "${pgrun[@]}" $pgdr_cmd backup --kind physical --type incr --jobs 2
  [ "$r" -eq 1 ] && sed -n 's/^/    /; 1p' "$work/out.$$"
  printf '%s\t%s\n' "pgdr incr $r" "$(( $(size_of "$work/pgdr-repo/bench/backups") - before ))" >> "$work/sizes.tsv"
  before=$(size_of "$work/pgbr-repo/backup")
  timed "pgbackrest incr $r" - "${pgrun[@]}" $pgbr_cmd backup --type=incr
  printf '%s\t%s\n' "pgbackrest incr $r" "$(( $(size_of "$work/pgbr-repo/backup") - before ))" >> "$work/sizes.tsv"
done

echo "== restores of the chains (--target immediate)"
mkdir -p "$work/r-pgdr" "$work/r-pgbr" "$work/r-full"
[ "$(id -u)" -eq 0 ] && chown postgres: "$work/r-pgdr" "$work/r-pgbr" "$work/r-full"
timed "pgdr restore chain" - "${pgrun[@]}" $pgdr_cmd restore --kind physical --to "$work/r-pgdr" --jobs 2 --target immediate
timed "pgbackrest restore chain" - "${pgrun[@]}" $pgbr_cmd restore --pg1-path="$work/r-pgbr" --type=immediate
# The same data as a full backup, restored by pgdr: what a chain restore is held to.
timed "pgdr full (same data)" - "${pgrun[@]}" $pgdr_cmd backup --kind physical --type full --jobs 2
timed "pgdr restore full" - "${pgrun[@]}" $pgdr_cmd restore --kind physical --to "$work/r-full" --jobs 2 --target immediate
a=$(cd "$work/r-pgdr" && find base global -type f -regex '.*/[0-9.]*' | sort | xargs md5sum | md5sum)
b=$(cd "$work/r-full" && find base global -type f -regex '.*/[0-9.]*' | sort | xargs md5sum | md5sum)
[ "$a" = "$b" ] && echo "  pgdr's chain and full restores have identical relation files" \
  || echo "  (pgdr's chain and full restores differ in relation files: hint bits set between the backups)"
rm -rf "$work/r-pgdr" "$work/r-pgbr" "$work/r-full"

median() {  # median TOOL COLUMN(2: wall in results, sizes: bytes)
  local tool=$1
  if [ "$2" = size ]; then
    awk -F'\t' -v t="$tool incr " 'index($1, t) == 1 {print $2}' "$work/sizes.tsv"
  else
    awk -F'\t' -v t="$tool incr " 'index($1, t) == 1 {print $2}' "$results"
  fi | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'
}
size1() { awk -F'\t' -v n="$1" '$1==n {print $2}' "$work/sizes.tsv"; }
peak() { awk -F'\t' -v t="$1" 'index($1, t) == 1 {print $3}' "$results" | sort -n | tail -n 1; }

echo
echo "== the first incremental (median of $rounds in brackets)"
printf '  %-10s %8s s (%s)  %12s bytes (%s)\n' pgdr "$(col 'pgdr incr 1' 2)" "$(median pgdr 2)" "$(size1 'pgdr incr 1')" "$(median pgdr size)"
printf '  %-10s %8s s (%s)  %12s bytes (%s)\n' pgBackRest "$(col 'pgbackrest incr 1' 2)" "$(median pgbackrest 2)" "$(size1 'pgbackrest incr 1')" "$(median pgbackrest size)"
echo
echo "== ratios pgdr / pgBackRest (targets in brackets)"
echo "incremental stored size:   $(ratio "$(size1 'pgdr incr 1')" "$(size1 'pgbackrest incr 1')")   [<= 1.0]  (median round $(ratio "$(median pgdr size)" "$(median pgbackrest size)"))"
echo "incremental wall:          $(ratio "$(col 'pgdr incr 1' 2)" "$(col 'pgbackrest incr 1' 2)")   [<= 0.5]  (median round $(ratio "$(median pgdr 2)" "$(median pgbackrest 2)"))"
echo "chain restore vs pgdr full: $(ratio "$(col 'pgdr restore chain' 2)" "$(col 'pgdr restore full' 2)")   [<= 1.2]  (full + $rounds incrementals against one full of the same data)"
echo "chain restore vs pgBackRest: $(ratio "$(col 'pgdr restore chain' 2)" "$(col 'pgbackrest restore chain' 2)")   [<= 0.7]"
echo "full backup wall:          $(ratio "$(col 'pgdr full' 2)" "$(col 'pgbackrest full' 2)")"
echo "pgdr peak RSS:             incremental $(( $(peak 'pgdr incr') / 1024 )) MiB, chain restore $(( $(col 'pgdr restore chain' 3) / 1024 )) MiB   [<= 64]"
echo "pgBackRest peak RSS:       incremental $(( $(peak 'pgbackrest incr') / 1024 )) MiB, chain restore $(( $(col 'pgbackrest restore chain' 3) / 1024 )) MiB"
