#!/usr/bin/env bash
# Benchmark, not a test: pgdr against pgBackRest (Debian's package) on the same real S3
# server, through the same latency proxy, the tools taking turns, in one run (issue 28).
#
#   client ──TLS──▶ stunnel (127.0.0.1) ──▶ scripts/s3-proxy.py ──▶ s3s-fs (127.0.0.1)
#                                       (+BENCH_DELAY_MS per request, counts requests)
#
#   pgBackRest: S3 repository, zst level 3, aes-256-cbc, process-max 2, asynchronous
#               archive-push and archive-get (its fastest mode), spool path
#   pgdr:       S3 repository, zstd level 3, AES-256-GCM, --jobs 2, [wal] push_parallel 4
#
# Measures a physical full backup of pgbench scale BENCH_SCALE (100), a restore into a new
# directory, recovery to `latest` over RECOVERY_SEGMENTS (100) archived segments fetched
# from S3 (and the local floor: the same replay with restore_command = cp from a local
# directory), a WAL burst of BURST_SEGMENTS (100) segments piled up with archiving paused
# then drained (BURST_ROUNDS rounds, median), the peak RSS of every pgdr process (the
# detached wal-push pusher included, sampled from /proc) and the S3 requests per archived
# and per fetched segment, counted at the proxy. Prints the ratios next to issue 28's
# targets.
#
#   BENCH_SCALE=100 BENCH_DELAY_MS=20 RECOVERY_SEGMENTS=100 BURST_SEGMENTS=100 BURST_ROUNDS=3
#   BENCH_PGDR_BIN=/path/to/pgdr   use this binary (copied) instead of building the checkout
#   BENCH_DIR=/var/tmp/pgdr-bench-s3   work directory (wiped at start)
#   BENCH_TOOLS=/var/tmp/pgdr-bench-tools   where s3s-fs is built once and cached
set -euo pipefail
export BENCH_DIR=${BENCH_DIR:-/var/tmp/pgdr-bench-s3}
source "$(dirname "$0")/bench-lib.sh"
bench_setup
scale=${BENCH_SCALE:-${SCALE:-100}}
delay_ms=${BENCH_DELAY_MS:-20}
rec_segments=${RECOVERY_SEGMENTS:-100}
burst_segments=${BURST_SEGMENTS:-100}
rounds=${BURST_ROUNDS:-3}
tools=${BENCH_TOOLS:-/var/tmp/pgdr-bench-tools}
scripts="$root/scripts"

# --- what is needed ------------------------------------------------------------------
need=()
command -v pgbackrest >/dev/null || need+=(pgbackrest)
command -v stunnel4 >/dev/null || need+=(stunnel4)
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The S3 server: s3s-fs's storage (a small S3 server on a local directory, fast enough
# not to be the bottleneck; moto is not) in a 40-line main built once and cached. Not the
# s3s-fs binary as published: it leaves Nagle's algorithm on, and a GET's body waits for
# the client's delayed ACK of the headers — 40 ms added to every GET. It also takes the
# keys on its command line; this one reads them from the environment.
s3s="$tools/bin/s3-bench-server"
if [ ! -x "$s3s" ]; then
  echo "== building the S3 server (s3s-fs 0.14.1) once into $tools (a few minutes)"
  src="$tools/src/s3-bench-server"
  mkdir -p "$src/src" "$tools/bin"
  cat > "$src/Cargo.toml" <<'TOML'
[package]
name = "s3-bench-server"
version = "0.1.0"
edition = "2024"
rust-version = "1.92"
publish = false

[dependencies]
s3s = "=0.14.1"
s3s-fs = "=0.14.1"
hyper-util = { version = "0.1.20", features = ["server-auto", "http1", "http2", "tokio"] }
tokio = { version = "1", features = ["full"] }

[profile.release]
debug = false
TOML
  cat > "$src/src/main.rs" <<'RUST'
//! s3s-fs's storage behind a plain HTTP/1.1 listener with TCP_NODELAY, for benchmarks.
//! Usage: s3-bench-server ROOT PORT; keys from S3_ACCESS_KEY / S3_SECRET_KEY.
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (root, port): (&str, u16) = (&args[1], args[2].parse().expect("port"));
    let fs = s3s_fs::FileSystem::new(root).expect("root directory");
    let mut b = S3ServiceBuilder::new(fs);
    if let (Ok(ak), Ok(sk)) = (std::env::var("S3_ACCESS_KEY"), std::env::var("S3_SECRET_KEY")) {
        b.set_auth(SimpleAuth::from_single(ak, sk));
    }
    let service = b.build();
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    let http = Builder::new(TokioExecutor::new());
    loop {
        let Ok((socket, _)) = listener.accept().await else { continue };
        let _ = socket.set_nodelay(true);
        let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
RUST
  (cd "$src" && CARGO_TARGET_DIR="$tools/target" nice -n 19 cargo build --release -j 2 > "$tools/build.log" 2>&1) \
    || { tail -n 30 "$tools/build.log" >&2; exit 1; }
  cp "$tools/target/release/s3-bench-server" "$s3s"
fi

# A private copy of the binary: someone may rebuild the original meanwhile.
mkdir -p "$work/bin"; cp "$pgdr" "$work/bin/pgdr"; pgdr="$work/bin/pgdr"
echo "== pgdr: $("$pgdr" --version), copied from ${BENCH_PGDR_BIN:-a build of this checkout}, md5 $(md5sum < "$pgdr" | cut -c1-12); $(pgbackrest version)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
s3port=$(free_port); proxyport=$(free_port); tlsport=$(free_port); rport=$(free_port)

# Made-up test credentials, the same for both tools and the server; never printed.
export AWS_ACCESS_KEY_ID=benchaccesskey AWS_SECRET_ACCESS_KEY=bench-secret-key-not-secret AWS_REGION=us-east-1
export PGBACKREST_REPO1_S3_KEY=$AWS_ACCESS_KEY_ID PGBACKREST_REPO1_S3_KEY_SECRET=$AWS_SECRET_ACCESS_KEY
# pgdr's AWS SDK trusts SSL_CERT_FILE (not AWS_CA_BUNDLE). Exported before the server
# starts, so archive_command and restore_command inherit it.
export SSL_CERT_FILE="$work/tls/ca.pem"

# --- cleanup ---------------------------------------------------------------------------
pids=()
cleanup() {
  set +e
  for d in "$work/data" "$work"/rec-*; do
    [ -f "$d/postmaster.pid" ] && as_pg "$bindir/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1
  done
  # pgdr's detached pusher, if still running (it was started by this run's archiving).
  if [ -f "$work/pgdr-spool/pusher.pid" ]; then
    p=$(cat "$work/pgdr-spool/pusher.pid" 2>/dev/null)
    [ -n "$p" ] && [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$pgdr" ] && kill "$p" 2>/dev/null
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
}
trap cleanup EXIT

# --- TLS: a CA and a server certificate for 127.0.0.1 ----------------------------------
mkdir -p "$work/tls"
(
  cd "$work/tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=pgdr bench CA" \
    -keyout ca.key -out ca.pem >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr >/dev/null 2>&1
  # DNS:127.0.0.1 as well as IP:127.0.0.1: pgBackRest 2.45 matches the host against DNS
  # names and the CN only; rustls wants an IP address entry.
  printf 'subjectAltName=IP:127.0.0.1,DNS:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' > ext.cnf
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile ext.cnf -out server.pem >/dev/null 2>&1
  chmod 644 ca.pem
)

# --- the S3 server, the proxy, stunnel --------------------------------------------------
mkdir -p "$work/s3/bench"
wait_port() {
  for _ in $(seq 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on 127.0.0.1:$1 ($2)" >&2; exit 1
}
S3_ACCESS_KEY=$AWS_ACCESS_KEY_ID S3_SECRET_KEY=$AWS_SECRET_ACCESS_KEY "$s3s" "$work/s3" "$s3port" > "$work/s3-server.log" 2>&1 &
s3pid=$!; pids+=($s3pid)
wait_port "$s3port" s3s-fs
python3 "$scripts/s3-proxy.py" --listen-port "$proxyport" --upstream-port "$s3port" \
  --delay-ms "$delay_ms" --stats "$work/proxy.json" --log "$work/requests.log" > "$work/proxy.log" 2>&1 &
proxypid=$!; pids+=($proxypid)
wait_port "$proxyport" proxy
cat > "$work/tls/stunnel.conf" <<CONF
foreground = yes
pid =
debug = 3
[s3]
accept = 127.0.0.1:$tlsport
connect = 127.0.0.1:$proxyport
cert = $work/tls/server.pem
key = $work/tls/server.key
CONF
stunnel4 "$work/tls/stunnel.conf" > "$work/stunnel.log" 2>&1 &
stunnelpid=$!; pids+=($stunnelpid)
wait_port "$tlsport" stunnel

# Snapshot of the proxy's counters: snap NAME → $work/counts-NAME.json, with the CPU time
# (clock ticks) used so far by the machine as a whole (busy and total, all cores), by the
# proxy, by stunnel and by the S3 server: where a phase's time went.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
snap() {
  echo "# $1" >> "$work/requests.log"
  rm -f "$work/proxy.json"
  kill -USR1 "$proxypid"
  for _ in $(seq 200); do [ -s "$work/proxy.json" ] && break; sleep 0.05; done
  local busy total
  read -r busy total < <(awk '/^cpu / {t=0; for (i=2;i<=NF;i++) t+=$i; print t-$5-$6, t}' /proc/stat)
  python3 - "$work/proxy.json" "$work/counts-$1.json" "$busy" "$total" "$(ticks "$proxypid")" \
    "$(ticks "$stunnelpid")" "$(ticks "$s3pid")" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["cpu"] = dict(zip(("busy", "total", "proxy", "stunnel", "server"), map(int, sys.argv[3:8])))
json.dump(c, open(sys.argv[2], "w"))
PY
}
# requests A B [DIVISOR] → one line: the requests between snapshots A and B (per DIVISOR)
requests() {
  python3 - "$work/counts-$1.json" "$work/counts-$2.json" "${3:-1}" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
n = float(sys.argv[3])
def d(k, sub=None):
    if sub: return b[k].get(sub, 0) - a[k].get(sub, 0)
    return b[k] - a[k]
parts = [f"{m} {d('methods', m) / n:.2f}" if n != 1 else f"{m} {d('methods', m)}"
         for m in ("HEAD", "GET", "LIST", "PUT", "POST", "DELETE") if d('methods', m)]
tot = d('requests') / n
line = (f"{tot:.2f}" if n != 1 else f"{int(tot)}") + " requests (" + ", ".join(parts) + "), " + \
    f"{d('bytes_down') / 1e6 / n:.1f} MB down, {d('bytes_up') / 1e6 / n:.1f} MB up, {d('connections') / n:.{2 if n != 1 else 0}f} connections"
if True:
    hz = 100  # USER_HZ
    cpu = {k: b["cpu"][k] - a["cpu"][k] for k in b["cpu"]}
    if cpu["total"]:
        line += (f"; CPU: machine {100 * cpu['busy'] / cpu['total']:.0f} % busy (all cores), "
                 f"proxy {cpu['proxy'] / hz:.1f} s, stunnel {cpu['stunnel'] / hz:.1f} s, S3 server {cpu['server'] / hz:.1f} s")
print(line)
PY
}
cpu_now() {  # machine busy and total ticks (all cores), then proxy, stunnel and server ticks
  local busy total
  read -r busy total < <(awk '/^cpu / {t=0; for (i=2;i<=NF;i++) t+=$i; print t-$5-$6, t}' /proc/stat)
  echo "$busy $total $(ticks "$proxypid") $(ticks "$stunnelpid") $(ticks "$s3pid")"
}
reqs_total() {  # reqs_total A B → the number of requests between two snapshots
  python3 -c "import json,sys; a,b=(json.load(open(p)) for p in sys.argv[1:]); print(b['requests']-a['requests'])" \
    "$work/counts-$1.json" "$work/counts-$2.json"
}

# --- peak RSS of every pgdr process: a sampler over /proc -------------------------------
# VmHWM is each process's own high-water mark, so a sample late in a process's life is
# enough. Lines: phase, subcommand, pid, VmHWM KiB, whenever a process's mark rises.
cat > "$work/rss-sampler.py" <<'PY'
import os, re, sys, time
exe, out, phasefile = sys.argv[1:4]
best = {}
f = open(out, "a", buffering=1)
hwm_re = re.compile(r"VmHWM:\s+(\d+)")
while True:
    try:
        phase = open(phasefile).read().strip()
    except OSError:
        phase = "?"
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{d}/exe") != exe:
                continue
            st = open(f"/proc/{d}/status").read()
            argv = open(f"/proc/{d}/cmdline", "rb").read().decode(errors="replace").split("\0")[1:]
            start = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[19]
        except (OSError, IndexError):
            continue
        m = hwm_re.search(st)
        if not m:
            continue
        hwm = int(m.group(1))
        words, skip = [], False
        for a in argv:
            if skip:
                skip = False
            elif a in ("--config", "--log-format", "--repository"):
                skip = True
            elif a and not a.startswith("-"):
                words.append(a)
        if not words or hwm == 0:
            continue  # between fork and exec, or a zombie
        kind = words[0]
        key = (d, start)
        if hwm > best.get(key, 0):
            best[key] = hwm
            f.write(f"{phase}\t{kind}\t{d}\t{hwm}\t{' '.join(argv)}\n")
    time.sleep(0.05)
PY
phase() { echo "$1" > "$work/phase"; }
phase setup
python3 "$work/rss-sampler.py" "$pgdr" "$work/rss.tsv" "$work/phase" &
pids+=($!)
peak_rss() {  # peak_rss PHASE-REGEX → "MiB (subcommand)" of the highest pgdr process
  awk -F'\t' -v p="$1" '$1 ~ p && $4 > m {m=$4; k=$2} END {if (m) printf "%d MiB (%s)", m/1024, k; else print "n/a"}' "$work/rss.tsv"
}

# --- both tools' configuration ----------------------------------------------------------
mkdir -p "$work/pgbr-log" "$work/pgbr-spool" "$work/pgdr-spool" "$work/walcopy"
"$pgdr" init --generate-key "$work/repo.key" >/dev/null
cat > "$work/pgdr.toml" <<TOML
cluster = "bench"
[postgres]
url = "postgresql://postgres@127.0.0.1:$port/postgres"
bin_dir = "$bindir"
data_dir = "$work/data"
[repository]
url = "s3://bench/pgdr"
endpoint = "https://127.0.0.1:$tlsport"
region = "us-east-1"
force_path_style = true
key_file = "$work/repo.key"
compress_level = 3
[wal]
spool_dir = "$work/pgdr-spool"
push_parallel = 4
archive_timeout = 600
TOML
cat > "$work/pgbackrest.conf" <<CONF
[global]
repo1-type=s3
repo1-path=/pgbackrest
repo1-s3-bucket=bench
repo1-s3-endpoint=127.0.0.1
repo1-s3-region=us-east-1
repo1-s3-uri-style=path
repo1-storage-port=$tlsport
repo1-storage-ca-file=$work/tls/ca.pem
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

[global:archive-get]
process-max=2

[bench]
pg1-path=$work/data
pg1-port=$port
pg1-socket-path=$work/sock
CONF
pgdr_cmd="$pgdr --config $work/pgdr.toml"
pgbr_cmd="pgbackrest --config=$work/pgbackrest.conf --stanza=bench"
bench_cluster "archive_mode=on" "max_wal_size=4GB" "checkpoint_timeout=30min"
trap cleanup EXIT  # bench_cluster set its own
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$work"

# archive_command lives in postgresql.auto.conf (a -c option would override it).
set_archive() {
  psql_q -d postgres -c "ALTER SYSTEM SET archive_command = '$1'" -c "SELECT pg_reload_conf()" >/dev/null
}
wait_archived() {  # until nothing is .ready (what was switched out is archived)
  for _ in $(seq 6000); do
    [ -z "$(find "$work/data/pg_wal/archive_status" -name '*.ready' -print -quit)" ] && return 0
    sleep 0.1
  done
  echo "archiving did not catch up in 10 minutes" >&2; exit 1
}
# Outside the bursts every segment goes to both tools and to a local copy (the floor's
# archive), so either tool can recover across all of it.
both="cp %p $work/walcopy/%f && $pgdr_cmd wal-push %p && $pgbr_cmd archive-push %p"

echo "== S3: s3s-fs on 127.0.0.1:$s3port ← proxy (+$delay_ms ms per request) :$proxyport ← stunnel TLS :$tlsport"
as_pg $pgdr_cmd init >/dev/null
as_pg $pgbr_cmd stanza-create >/dev/null

echo "== pgbench -i -s $scale (not archived)"
set_archive "true"
psql_q -d postgres -c "CREATE DATABASE bench"
"$bindir/pgbench" -i -q -s "$scale" -p "$port" bench 2>/dev/null
psql_q -d bench -c "VACUUM ANALYZE" -c "CHECKPOINT"
psql_q -d postgres -c "SELECT pg_switch_wal()" >/dev/null; sleep 1; wait_archived
set_archive "$both"; sleep 1

# timed_s3 NAME PHASE command... : timed, with the proxy's counts around it
timed_s3() {
  local name=$1 ph=$2; shift 2
  phase "$ph"; snap "$ph-0"
  timed "$name" - "$@"
  snap "$ph-1"; phase idle
  echo "    S3: $(requests "$ph-0" "$ph-1")"
}

echo "== full backups"
stored() { du -sb "$work/s3/bench/$1" 2>/dev/null | awk '{print $1}'; }
s0=$(stored pgdr)
timed_s3 "pgdr backup --kind physical" backup-pgdr "${pgrun[@]}" $pgdr_cmd backup --kind physical --jobs 2
echo "    stored: $(( ($(stored pgdr) - s0) / 1000000 )) MB"
s0=$(stored pgbackrest)
timed_s3 "pgbackrest backup --type=full" backup-pgbr "${pgrun[@]}" $pgbr_cmd backup --type=full
echo "    stored: $(( ($(stored pgbackrest) - s0) / 1000000 )) MB"
wait_archived

echo "== restores (--target immediate, into a new directory)"
mkdir -p "$work/rec-pgdr" "$work/rec-pgbr"; [ "$(id -u)" -eq 0 ] && chown postgres: "$work/rec-pgdr" "$work/rec-pgbr"
timed_s3 "pgdr restore --jobs 2" restore-pgdr "${pgrun[@]}" $pgdr_cmd restore --kind physical --to "$work/rec-pgdr" --jobs 2 --target immediate
timed_s3 "pgbackrest restore" restore-pgbr "${pgrun[@]}" $pgbr_cmd restore --pg1-path="$work/rec-pgbr" --type=immediate --archive-mode=off
a=$(cd "$work/rec-pgdr" && find base global -type f | sort | xargs md5sum | md5sum)
b=$(cd "$work/rec-pgbr" && find base global -type f | sort | xargs md5sum | md5sum)
[ "$a" = "$b" ] && echo "  restored data files identical between the two tools" \
  || echo "  (restored files differ between tools: the backups were taken at different moments)"
rm -rf "$work/rec-pgdr" "$work/rec-pgbr"

# Segments of real change: 60,000 rows of ~70 bytes, then a switch.
psql_q -d bench -c "CREATE TABLE burst (id bigint, pad text) WITH (autovacuum_enabled = off)"
make_segments() {
  for _ in $(seq "$1"); do
    psql_q -d bench -c "INSERT INTO burst SELECT g, md5(random()::text) || md5(random()::text) FROM generate_series(1, 60000) g" -c "SELECT pg_switch_wal()" >/dev/null
  done
}

echo "== recovery to latest over $rec_segments segments archived after the backups"
make_segments "$rec_segments"
last_wal=$(psql_q -d postgres -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
psql_q -d postgres -c "SELECT pg_switch_wal()" >/dev/null
wait_archived
echo "  archived up to $last_wal (both tools and the local copy)"
# recover NAME DIR : start the restored server (its restore_command as restored), time
# until recovery has ended and it accepts connections. hot_standby=off: pg_ctl -w then
# returns at the end of recovery, not at consistency.
recover() {
  local name=$1 dir=$2 ph="recovery-$1"
  as_pg sh -c "echo 'hot_standby = off' >> '$dir/postgresql.auto.conf'"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  phase "$ph"; snap "$ph-0"
  local start end
  start=$(date +%s.%N)
  as_pg "$bindir/pg_ctl" -D "$dir" -l "$work/$ph.log" -W \
    -o "-p $rport -k $work/sock -c listen_addresses=127.0.0.1 -c hot_standby=off" start >/dev/null
  # pg_ctl -w would return at the start of recovery ("standby" status with hot_standby
  # off): watch the log for the end of recovery instead, polling every 50 ms.
  local t=0
  until grep -q 'database system is ready to accept connections' "$work/$ph.log" 2>/dev/null; do
    if [ $((t % 20)) -eq 0 ] && ! as_pg "$bindir/pg_ctl" -D "$dir" status >/dev/null 2>&1 && [ "$t" -gt 40 ]; then
      echo "recovery $name failed (the server stopped):" >&2; tail -n 30 "$work/$ph.log" >&2; exit 1
    fi
    t=$((t + 1)); [ "$t" -lt 72000 ] || { echo "recovery $name: not done in an hour" >&2; exit 1; }
    sleep 0.05
  done
  end=$(date +%s.%N)
  for _ in $(seq 100); do
    "$bindir/psql" -X -At -p "$rport" -d postgres -c "SELECT 1" >/dev/null 2>&1 && break; sleep 0.1
  done
  local inrec
  inrec=$("$bindir/psql" -X -At -p "$rport" -d postgres -c "SELECT pg_is_in_recovery()")
  as_pg "$bindir/pg_ctl" -D "$dir" -m fast stop >/dev/null
  sleep 1; snap "$ph-1"; phase idle
  local fetched lastseg
  fetched=$(grep -cE 'restored log file "[0-9A-F]{24}"' "$work/$ph.log" || true)
  lastseg=$(grep -oE 'restored log file "[0-9A-F]{24}"' "$work/$ph.log" | tail -n 1 | grep -oE '[0-9A-F]{24}' || true)
  [ "$inrec" = f ] || { echo "recovery $name: still in recovery" >&2; exit 1; }
  [[ "$lastseg" > "$last_wal" || "$lastseg" == "$last_wal" ]] \
    || { echo "recovery $name: stopped at $lastseg, before $last_wal" >&2; tail -n 20 "$work/$ph.log" >&2; exit 1; }
  local wall
  wall=$(python3 -c "print(f'{$end - $start:.2f}')")
  printf '%s\t%s\t0\t%s\n' "recovery $name" "$wall" "$fetched" >> "$results"
  printf '  %-34s %8.2f s  %4d segments restored (last %s)\n' "recovery $name" "$wall" "$fetched" "$lastseg"
  echo "    S3: $(requests "$ph-0" "$ph-1")"
  echo "    per fetched segment: $(requests "$ph-0" "$ph-1" "$fetched")"
  printf '%s\t%s\n' "$name" "$(python3 -c "print($(reqs_total "$ph-0" "$ph-1") / $fetched)")" >> "$work/fetch-requests.tsv"
  rm -rf "$dir"
}
mkdir -p "$work/rec-pgdr" "$work/rec-pgbr" "$work/rec-floor"
[ "$(id -u)" -eq 0 ] && chown postgres: "$work/rec-pgdr" "$work/rec-pgbr" "$work/rec-floor"
as_pg $pgdr_cmd restore --kind physical --to "$work/rec-pgdr" --jobs 2 --target latest >/dev/null
as_pg $pgbr_cmd restore --pg1-path="$work/rec-pgbr" --archive-mode=off >/dev/null
as_pg $pgdr_cmd restore --kind physical --to "$work/rec-floor" --jobs 2 --target latest >/dev/null
# The floor: pgdr's backup, every segment already on local disk.
as_pg sh -c "echo \"restore_command = 'cp $work/walcopy/%f %p'\" >> '$work/rec-floor/postgresql.auto.conf'"
echo "  restore_command pgdr:       $(grep -h '^restore_command' "$work/rec-pgdr"/postgresql*.conf | tail -n 1)"
echo "  restore_command pgBackRest: $(grep -h '^restore_command' "$work/rec-pgbr"/postgresql*.conf | tail -n 1)"
recover floor "$work/rec-floor"
recover pgdr "$work/rec-pgdr"
recover pgbackrest "$work/rec-pgbr"

# WAL burst: $burst_segments segments pile up (archive_command fails), then the time
# until the tool has archived them all; the tools take turns, each scored by its median.
burst() {  # burst NAME COMMAND
  local name=$1 command=$2 ph="burst-$1"
  set_archive "false"
  sleep 1
  local before
  before=$(psql_q -d postgres -c "SELECT archived_count FROM pg_stat_archiver")
  make_segments "$burst_segments"
  local target=$((before + burst_segments))
  psql_q -d postgres -c "CHECKPOINT" >/dev/null
  local rsslog="$work/rss-$name.log"
  : > "$rsslog"; chmod 666 "$rsslog"
  phase "$ph"; snap "$ph-0"
  local start end
  start=$(date +%s.%N)
  set_archive "/usr/bin/time -f %M -a -o $rsslog $command"
  local cpu0 cpu1
  cpu0=$(cpu_now)
  while [ -n "$(find "$work/data/pg_wal/archive_status" -name '*.ready' -print -quit)" ]; do sleep 0.1; done
  end=$(date +%s.%N)
  cpu1=$(cpu_now)
  local archived
  archived=$(psql_q -d postgres -c "SELECT archived_count FROM pg_stat_archiver")
  [ "$archived" -ge "$target" ] || { echo "burst $name: only $((archived - before)) of $burst_segments archived" >&2; exit 1; }
  # pgdr's detached pusher ends a moment after the last segment; count its requests too.
  for _ in $(seq 100); do [ -e "$work/pgdr-spool/pusher.pid" ] || break; sleep 0.1; done
  sleep 1; snap "$ph-1"; phase idle
  local wall rss
  wall=$(python3 -c "print(f'{$end - $start:.2f}')")
  rss=$(grep -E '^[0-9]+$' "$rsslog" | sort -n | tail -n 1)
  # During the drain itself: how busy the machine was, and the CPU of everything but
  # the proxy, stunnel and the S3 server (the tool, PostgreSQL's archiver) per segment.
  local busy tool_ms
  read -r busy tool_ms < <(python3 -c "
a, b = [list(map(int, x.split())) for x in ('$cpu0', '$cpu1')]
d = [y - x for x, y in zip(a, b)]
print(f'{100 * d[0] / d[1]:.0f} {1000 * (d[0] - d[2] - d[3] - d[4]) / 100 / $burst_segments:.1f}')")
  printf '%s\t%s\t%s\t%s\t%s\n' "$wall" "$rss" "$(reqs_total "$ph-0" "$ph-1")" "$busy" "$tool_ms" >> "$work/rounds-$name.tsv"
  printf '  %-34s %8.2f s  %6.1f segments/s  (foreground peak RSS %d KiB)\n' "burst $name" "$wall" \
    "$(python3 -c "print($burst_segments / $wall)")" "$rss"
  echo "    during the drain: machine ${busy} % busy (both cores); the tool and PostgreSQL used ${tool_ms} ms of CPU per segment (all but proxy, stunnel, S3 server)"
  echo "    per archived segment: $(requests "$ph-0" "$ph-1" "$burst_segments")"
  psql_q -d bench -c "TRUNCATE burst" -c "CHECKPOINT" >/dev/null
}
echo "== WAL burst: $burst_segments segments, $rounds round(s), tools taking turns"
for round in $(seq "$rounds"); do
  burst pgdr "$pgdr_cmd wal-push %p"
  burst pgbackrest "$pgbr_cmd archive-push %p"
done
for name in pgdr pgbackrest; do
  median=$(sort -n "$work/rounds-$name.tsv" | awk '{w[NR]=$1} END {print w[int((NR+1)/2)]}')
  peak=$(sort -k2 -n "$work/rounds-$name.tsv" | tail -n 1 | cut -f2)
  reqs=$(awk '{s+=$3} END {print s/NR}' "$work/rounds-$name.tsv")
  busy=$(cut -f4 "$work/rounds-$name.tsv" | sort -n | awk '{w[NR]=$1} END {print w[int((NR+1)/2)]}')
  tool_ms=$(cut -f5 "$work/rounds-$name.tsv" | sort -n | awk '{w[NR]=$1} END {print w[int((NR+1)/2)]}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "burst $name" "$median" "$peak" "$reqs" "$busy" "$tool_ms" >> "$results"
done

# --- the table --------------------------------------------------------------------------
pusher_peak=$( (grep -ho 'peak RSS [0-9]*' "$work/pgdr-spool/pusher.log" 2>/dev/null || true) | awk '{print $3}' | sort -n | tail -n 1)
python3 - "$results" "$work/fetch-requests.tsv" "$work/rss.tsv" "${pusher_peak:-0}" \
  "$scale" "$delay_ms" "$rec_segments" "$burst_segments" "$rounds" > "$work/table.md" <<'PY'
import sys, datetime
results, fetchf, rssf, pusher_peak, scale, delay, rec, burst, rounds = sys.argv[1:]
r = {}
for line in open(results):
    f = line.rstrip("\n").split("\t")
    r[f[0]] = f[1:]
wall = lambda n: float(r[n][0])
fetch = dict(l.split() for l in open(fetchf))
burst_n = int(burst)
rate = lambda n: burst_n / wall(f"burst {n}")
rss = {}
for line in open(rssf):
    ph, kind, pid, hwm = line.rstrip("\n").split("\t")[:4]
    hwm = int(hwm)
    if hwm > rss.get(kind, (0, ""))[0]:
        rss[kind] = (hwm, ph)
pp = int(pusher_peak)
peak_kind = max(rss.items(), key=lambda kv: kv[1][0]) if rss else ("n/a", (0, ""))
peak = max(peak_kind[1][0], pp)
ok = lambda c: "✓" if c else "✗"
rows = []
def row(measure, value, target, met):
    rows.append(f"| {measure} | {value} | {target} | {ok(met)} |")
x = rate("pgdr") / rate("pgbackrest")
row(f"WAL burst rate, pgdr / pgBackRest ({rate('pgdr'):.1f} / {rate('pgbackrest'):.1f} segments/s)", f"{x:.2f}×", "≥ 2.0×", x >= 2.0)
x = wall("pgdr backup --kind physical") / wall("pgbackrest backup --type=full")
row(f"physical full backup wall, pgdr / pgBackRest ({wall('pgdr backup --kind physical'):.1f} / {wall('pgbackrest backup --type=full'):.1f} s)", f"{x:.2f}", "≤ 0.5", x <= 0.5)
x = wall("pgdr restore --jobs 2") / wall("pgbackrest restore")
row(f"restore wall, pgdr / pgBackRest ({wall('pgdr restore --jobs 2'):.1f} / {wall('pgbackrest restore'):.1f} s)", f"{x:.2f}", "≤ 0.6", x <= 0.6)
x = wall("recovery pgdr") / wall("recovery floor")
row(f"recovery to latest over {rec} segments, pgdr / local floor ({wall('recovery pgdr'):.1f} / {wall('recovery floor'):.1f} s)", f"{x:.2f}", "≤ 1.15", x <= 1.15)
x = wall("recovery pgdr") / wall("recovery pgbackrest")
row(f"recovery to latest over {rec} segments, pgdr / pgBackRest ({wall('recovery pgdr'):.1f} / {wall('recovery pgbackrest'):.1f} s)", f"{x:.2f}", "≤ 0.6", x <= 0.6)
a, b = float(r["burst pgdr"][2]) / burst_n, float(r["burst pgbackrest"][2]) / burst_n
burst_cpu = (f"During the bursts (medians): the machine was {r['burst pgdr'][3]} % / {r['burst pgbackrest'][3]} % busy "
             f"(pgdr / pgBackRest, both cores), and the tool with PostgreSQL used {r['burst pgdr'][4]} / "
             f"{r['burst pgbackrest'][4]} ms of CPU per segment (all but the proxy, stunnel and the S3 server).")
row("S3 requests per archived segment, pgdr / pgBackRest", f"{a:.2f} / {b:.2f}", "≤ pgBackRest's", a <= b)
a, b = float(fetch["pgdr"]), float(fetch["pgbackrest"])
row("S3 requests per fetched segment, pgdr / pgBackRest", f"{a:.2f} / {b:.2f}", "≤ pgBackRest's", a <= b)
row(f"peak RSS of any pgdr process ({peak_kind[0]})", f"{peak / 1024:.0f} MiB", "≤ 64 MiB", peak <= 64 * 1024)
print(f"{datetime.date.today()}: pgbench scale {scale}, {delay} ms added per request, recovery over {rec} segments, "
      f"WAL burst of {burst} segments (median of {rounds}); s3s-fs behind the proxy and stunnel on 127.0.0.1")
print()
print(f"| measure, {delay} ms per request | measured | target | |")
print("|---|---|---|---|")
print("\n".join(rows))
print()
print(burst_cpu)
print()
print("pgdr peak RSS by subcommand (sampled VmHWM): " + ", ".join(
    f"{k} {v[0] / 1024:.0f} MiB" for k, v in sorted(rss.items(), key=lambda kv: -kv[1][0]))
    + (f"; the pusher's own log: {pp / 1024:.0f} MiB" if pp else ""))
PY
echo
cat "$work/table.md"
echo
echo "(also in $work/table.md; per-phase request counts above; proxy counts in $work/counts-*.json)"
