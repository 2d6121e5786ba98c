#!/usr/bin/env bash
# Benchmark, not a test: pgdr physical backup / restore / archive burst side by side
# with pgBackRest (Debian's package) on the same pgbench database (scale ${SCALE:-100},
# about 1.5 GB), in one run.
#   pgBackRest: posix repo, compress-type=zst, compress-level=3, aes-256-cbc, process-max=2,
#               asynchronous archive-push (its fastest mode)
#   pgdr:       local repository, zstd level 3, AES-256-GCM, --jobs 2, wal push_parallel 4
#   floor:      pg_basebackup -Ft -D - -X none > /dev/null
# Prints wall time, peak RSS and repository size for each, and the pgdr/pgBackRest ratios.
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
bench_setup
scale=${SCALE:-100}
segments=${SEGMENTS:-200}
command -v pgbackrest >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest >/dev/null; }

# Both tools' configuration, owned by postgres.
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
compress-type=zst
compress-level=3
process-max=2
log-path=$work/pgbr-log
lock-path=$work/pgbr-log
spool-path=$work/pgbr-spool
archive-async=y
log-level-console=warn
start-fast=y

[global:archive-push]
process-max=2

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

# archive_command lives in postgresql.auto.conf (a -c option would override it).
set_archive() {
  psql_q -d postgres -c "ALTER SYSTEM SET archive_command = '$1'" -c "SELECT pg_reload_conf()" >/dev/null
}
set_archive "$pgdr_cmd wal-push %p"

echo "== pgbench -i -s $scale"
psql_q -d postgres -c "CREATE DATABASE bench"
"$bindir/pgbench" -i -q -s "$scale" -p "$port" bench 2>/dev/null
psql_q -d bench -c "VACUUM ANALYZE" -c "CHECKPOINT"

echo "== full backups"
timed "pg_basebackup -Ft -D - (floor)" - sh -c "'$bindir/pg_basebackup' -h 127.0.0.1 -p $port -U postgres -Ft -X none -D - > /dev/null"
set_archive "$pgdr_cmd wal-push %p"; sleep 1
timed "pgdr backup --kind physical" "$work/pgdr-repo/bench/backups" "${pgrun[@]}" $pgdr_cmd backup --kind physical --jobs 2
set_archive "$pgbr_cmd archive-push %p"; sleep 1
as_pg $pgbr_cmd stanza-create >/dev/null
timed "pgbackrest backup --type=full" "$work/pgbr-repo/backup" "${pgrun[@]}" $pgbr_cmd backup --type=full

echo "== restores"
mkdir -p "$work/r-pgdr" "$work/r-pgbr"; [ "$(id -u)" -eq 0 ] && chown postgres: "$work/r-pgdr" "$work/r-pgbr"
timed "pgdr restore --jobs 2" - "${pgrun[@]}" $pgdr_cmd restore --kind physical --to "$work/r-pgdr" --jobs 2 --target immediate
timed "pgbackrest restore" - "${pgrun[@]}" $pgbr_cmd restore --pg1-path="$work/r-pgbr" --type=immediate
a=$(cd "$work/r-pgdr" && find base global -type f | sort | xargs md5sum | md5sum)
b=$(cd "$work/r-pgbr" && find base global -type f | sort | xargs md5sum | md5sum)
[ "$a" = "$b" ] && echo "  restored data files identical between the two tools" \
  || echo "  (restored files differ between tools: the backups were taken at different moments)"
rm -rf "$work/r-pgdr" "$work/r-pgbr"

# Archive burst: let $segments segments pile up (archive_command fails), then time
# until the tool has archived them all. Each tool gets a fresh pile of the same kind.
# No autovacuum on the burst table: it would compete for the CPU during the timing.
psql_q -d bench -c "CREATE TABLE burst (id bigint, pad text) WITH (autovacuum_enabled = off)"
burst() {  # burst NAME COMMAND [LOG WITH "peak RSS N" LINES OF DETACHED WORKERS]
  local name=$1 command=$2
  set_archive "false"
  sleep 1
  local before
  before=$(psql_q -d postgres -c "SELECT archived_count FROM pg_stat_archiver")
  for _ in $(seq "$segments"); do
    psql_q -d bench -c "INSERT INTO burst SELECT g, md5(random()::text) || md5(random()::text) FROM generate_series(1, 60000) g" -c "SELECT pg_switch_wal()" >/dev/null
  done
  local target=$((before + segments))
  # Let the checkpoint the pile caused finish before the clock starts.
  psql_q -d postgres -c "CHECKPOINT" >/dev/null
  local rsslog="$work/rss-${name// /-}.log"
  : > "$rsslog"; chmod 666 "$rsslog"
  local start end
  start=$(date +%s.%N)
  set_archive "/usr/bin/time -f %M -a -o $rsslog $command"
  # Poll the status directory, not the server: a psql process and a backend every
  # tick would take CPU from the tool being timed. Nothing else makes WAL meanwhile.
  while [ -n "$(find "$work/data/pg_wal/archive_status" -name '*.ready' -print -quit)" ]; do sleep 0.1; done
  end=$(date +%s.%N)
  local archived
  archived=$(psql_q -d postgres -c "SELECT archived_count FROM pg_stat_archiver")
  [ "$archived" -ge "$target" ] || { echo "burst $name: only $((archived - before)) of $segments archived" >&2; exit 1; }
  local wall rss
  wall=$(python3 -c "print(f'{$end - $start:.2f}')")
  rss=$(grep -E '^[0-9]+$' "$rsslog" | sort -n | tail -n 1)
  # pgdr's detached pusher is not a child time(1) waits for: it logs its own peak
  # when it ends, a moment after the last segment.
  if [ -n "${3:-}" ]; then
    for _ in $(seq 100); do [ -e "$(dirname "$3")/pusher.pid" ] || break; sleep 0.1; done
    local pusher
    pusher=$( (grep -o 'peak RSS [0-9]*' "$3" 2>/dev/null || true) | awk '{print $3}' | sort -n | tail -n 1)
    if [ -n "$pusher" ] && [ "$pusher" -gt "$rss" ]; then rss=$pusher; fi
  fi
  printf '%s\t%s\n' "$wall" "$rss" >> "$work/rounds-${name// /-}.tsv"
  printf '  %-34s %8.2f s  %8d KiB RSS  %6.1f segments/s\n' "$name" "$wall" "$rss" "$(python3 -c "print($segments / $wall)")"
  psql_q -d bench -c "TRUNCATE burst" -c "CHECKPOINT" >/dev/null
}
# The machine is shared and noisy: the tools take turns, $rounds rounds, and each
# is scored by its median round (peak RSS: the highest of any round).
rounds=${BURST_ROUNDS:-3}
echo "== archive burst: $segments segments, $rounds rounds, tools taking turns"
for round in $(seq "$rounds"); do
  burst "archive burst pgdr" "$pgdr_cmd wal-push %p" "$work/pgdr-spool/pusher.log"
  burst "archive burst pgbackrest" "$pgbr_cmd archive-push %p"
done
for name in "archive burst pgdr" "archive burst pgbackrest"; do
  median=$(sort -n "$work/rounds-${name// /-}.tsv" | awk '{w[NR]=$1} END {print w[int((NR+1)/2)]}')
  peak=$(sort -k2 -n "$work/rounds-${name// /-}.tsv" | tail -n 1 | cut -f2)
  printf '%s\t%s\t%s\t0\n' "$name" "$median" "$peak" >> "$results"
  printf '  %-34s median %6.2f s = %5.1f segments/s\n' "$name" "$median" "$(python3 -c "print($segments / $median)")"
done

echo
echo "== ratios pgdr / pgBackRest (targets in brackets)"
echo "backup wall:        $(ratio "$(col 'pgdr backup --kind physical' 2)" "$(col 'pgbackrest backup --type=full' 2)")   [<= 0.80]"
echo "restore wall:       $(ratio "$(col 'pgdr restore --jobs 2' 2)" "$(col 'pgbackrest restore' 2)")   [<= 0.80]"
echo "archive burst rate: $(ratio "$(col 'archive burst pgbackrest' 2)" "$(col 'archive burst pgdr' 2)")   [>= 1.50] (segments/s, pgdr over pgBackRest)"
echo "repository size:    $(ratio "$(col 'pgdr backup --kind physical' 4)" "$(col 'pgbackrest backup --type=full' 4)")   [<= 1.05]"
echo "backup vs floor:    $(ratio "$(col 'pgdr backup --kind physical' 2)" "$(col 'pg_basebackup -Ft -D - (floor)' 2)")   (pg_basebackup to /dev/null)"
echo "pgdr peak RSS:      backup $(( $(col 'pgdr backup --kind physical' 3) / 1024 )) MiB, restore $(( $(col 'pgdr restore --jobs 2' 3) / 1024 )) MiB, wal-push $(( $(col 'archive burst pgdr' 3) / 1024 )) MiB   [<= 128]"
echo "pgBackRest peak RSS: backup $(( $(col 'pgbackrest backup --type=full' 3) / 1024 )) MiB, restore $(( $(col 'pgbackrest restore' 3) / 1024 )) MiB, archive-push $(( $(col 'archive burst pgbackrest' 3) / 1024 )) MiB"
