#!/usr/bin/env bash
# Soak (issue 14): pgbench at full speed against a sandbox cluster whose
# archive_command is `pgdr wal-push`, while pgdr's own scheduler runs physical backups,
# restore verification, a copy to a second repository and expire, for SOAK_SECONDS
# (default 600). Every 10 s it samples the archive lag (segments PostgreSQL has ready
# but not yet archived, and seconds since the last archived one) and pgdr's peak RSS.
# At the end: lag over time, the maximum, failed archive attempts, every job's outcome,
# peak RSS per verb, and a check that the newest backup restores and matches.
#
# A script, not a test: it runs for minutes. BENCH_DIR (default /var/tmp/pgdr-soak)
# holds everything; the results are in $BENCH_DIR/soak.tsv and printed.
set -euo pipefail
export BENCH_DIR=${BENCH_DIR:-/var/tmp/pgdr-soak}
secs=${SOAK_SECONDS:-600}
clients=${SOAK_CLIENTS:-4}
source "$(dirname "$0")/bench-lib.sh"
bench_setup

mkdir -p "$work/repo" "$work/copy" "$work/spool"
key="$work/repo.key"
conf="$work/pgdr.toml"
# pgdr as archive_command runs it: a wrapper that records each call's peak RSS.
cat > "$work/pgdr-timed" <<EOF
#!/bin/sh
exec /usr/bin/time -f "wal-push %M" -a -o "$work/rss.log" "$pgdr" "\$@"
EOF
chmod 755 "$work/pgdr-timed"
: > "$work/rss.log"; chmod 666 "$work/rss.log"

bench_cluster "archive_mode=on" "wal_level=replica" "max_wal_size=1GB" \
  "archive_command='$work/pgdr-timed --config $conf wal-push %p'" "archive_timeout=60"
cat > "$conf" <<EOF
cluster = "soak"

[postgres]
url = "postgresql://postgres@127.0.0.1:$port/postgres"
bin_dir = "$bindir"
data_dir = "$work/data"

[repository]
url = "file://$work/repo"
key_file = "$key"

[[repository.copies]]
name = "dr"
url = "file://$work/copy"

[wal]
spool_dir = "$work/spool"

[retention]
full_count = 2
wal_days = 1
EOF
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$work"
as_pg "$pgdr" --config "$conf" init --generate-key "$key" >/dev/null

cat > "$work/soak-schedule.toml" <<EOF
[[job]]
name = "physical"
cron = "0 */2 * * * *"
command = "backup"
args = ["--kind", "physical"]
timeout = "10m"

[[job]]
name = "copy"
cron = "30 * * * * *"
command = "copy"
args = ["--to", "dr"]
timeout = "10m"

[[job]]
name = "expire"
cron = "45 */3 * * * *"
command = "expire"
timeout = "10m"

[[job]]
name = "verify"
cron = "15 */4 * * * *"
command = "verify"
args = ["--kind", "physical"]
timeout = "10m"
EOF
as_pg "$pgdr" --config "$conf" schedule check --file "$work/soak-schedule.toml" >/dev/null

echo "soak: pgbench scale 20, $clients clients, ${secs} s; pgdr backs up every 2 min, copies every minute, expires every 3, verifies every 4"
"$bindir/pgbench" -p "$port" -i -s 20 -q postgres >/dev/null 2>&1
as_pg "$pgdr" --config "$conf" backup --kind physical >/dev/null
metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# The scheduler runs each job as a child of its own: /usr/bin/time's peak RSS of it
# covers the scheduler and every job it ran (the largest of them).
as_pg /usr/bin/time -f "schedule+jobs %M" -a -o "$work/rss.log" "$pgdr" --config "$conf" schedule run --file "$work/soak-schedule.toml" \
  --listen "127.0.0.1:$metrics_port" --history "$work/history.jsonl" > "$work/schedule.log" 2>&1 &
sched=$!
"$bindir/pgbench" -p "$port" -c "$clients" -j 2 -T "$secs" -n postgres > "$work/pgbench.log" 2>&1 &
bench=$!

lag="$work/soak.tsv"
printf 'second\tready_segments\tsecs_since_archived\tfailed_count\tarchived_count\n' > "$lag"
start=$SECONDS
while kill -0 "$bench" 2>/dev/null; do
  ready=$(ls "$work/data/pg_wal/archive_status" 2>/dev/null | grep -c '\.ready$' || true)
  read -r since failed archived < <(psql_q postgres -c \
    "SELECT coalesce(round(extract(epoch FROM now() - last_archived_time))::int, -1), failed_count, archived_count FROM pg_stat_archiver" | tr '|' ' ')
  printf '%s\t%s\t%s\t%s\t%s\n' "$((SECONDS - start))" "$ready" "$since" "$failed" "$archived" >> "$lag"
  sleep 10
done
wait "$bench" || { echo "pgbench failed:"; cat "$work/pgbench.log"; exit 1; }
# Let the last jobs and the archive catch up, then stop the scheduler.
psql_q postgres -c "SELECT pg_switch_wal()" >/dev/null
for _ in $(seq 1 60); do
  ready=$(ls "$work/data/pg_wal/archive_status" | grep -c '\.ready$' || true)
  [ "$ready" -eq 0 ] && break; sleep 2
done
# SIGTERM to the scheduler itself (not to runuser or time, which would die without
# writing the peak RSS).
for pid in $(pgrep -f "schedule run --file $work/soak-schedule.toml"); do
  [ "$(ps -o comm= -p "$pid")" = pgdr ] && kill -TERM "$pid"
done
wait "$sched" || true

echo
echo "archive lag every 10 s (ready segments / seconds since the last archived):"
awk -F'\t' 'NR>1 {printf "  %4ss %3s/%-4s", $1, $2, $3; if ((NR-1) % 6 == 0) printf "\n"} END {printf "\n"}' "$lag"
max_ready=$(awk -F'\t' 'NR>1 && $2>m {m=$2} END {print m+0}' "$lag")
max_since=$(awk -F'\t' 'NR>1 && $3>m {m=$3} END {print m+0}' "$lag")
last=$(tail -n 1 "$lag")
echo "max ready segments: $max_ready; max seconds since the last archived: $max_since"
echo "archiver at the end: failed_count $(echo "$last" | cut -f4), archived_count $(echo "$last" | cut -f5), ready now: $ready"
echo "pgbench: $(grep -E '^tps' "$work/pgbench.log" | head -n 1)"
echo
echo "jobs (from the scheduler's history):"
python3 - "$work/history.jsonl" <<'PY'
import collections, json, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs[r.get("job", "?")].append(r)
for job, rs in sorted(runs.items()):
    ok = sum(1 for r in rs if r.get("outcome") in ("success", "succeeded"))
    secs = [r.get("seconds", 0) for r in rs]
    print(f"  {job:<10} {len(rs)} runs, {ok} succeeded, longest {max(secs):.1f} s")
    for r in rs:
        if r.get("outcome") not in ("success", "succeeded"):
            print(f"    {r.get('outcome')}: {r.get('detail', '')}"[:200])
PY
echo
echo "peak RSS (KiB):"
awk '{ if ($2 > m[$1]) m[$1] = $2; n[$1]++ } END { for (v in m) printf "  %-10s %6d (over %d runs)\n", v, m[v], n[v] }' "$work/rss.log" | sort
echo
echo "errors in the server log: $(grep -c -E 'archive command failed|FATAL|PANIC' "$work/server.log" || true)"
grep -E 'archive command failed' "$work/server.log" | head -n 5 || true

# The newest backup plus WAL restores and matches the source.
restore="$work/restored"; rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/rsock"; [ "$(id -u)" -eq 0 ] && chown postgres: "$work/rsock"
want=$(psql_q postgres -c "SELECT md5(string_agg(aid::text || ':' || abalance, ',' ORDER BY aid)) FROM pgbench_accounts")
psql_q postgres -c "SELECT pg_switch_wal()" >/dev/null; sleep 3
as_pg "$pgdr" --config "$conf" restore --kind physical --to "$restore" --start --port "$rport" --socket-dir "$work/rsock" >/dev/null
got=$("$bindir/psql" -X -At -h "$work/rsock" -p "$rport" -U postgres -c "SELECT md5(string_agg(aid::text || ':' || abalance, ',' ORDER BY aid)) FROM pgbench_accounts" postgres)
as_pg "$bindir/pg_ctl" -D "$restore" -m immediate stop >/dev/null 2>&1 || true
if [ "$got" = "$want" ]; then echo "restore of the newest backup + WAL: pgbench_accounts matches ($want)"; else echo "restore MISMATCH: $got vs $want"; exit 1; fi
