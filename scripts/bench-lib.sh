# Shared helpers for the benchmark scripts (sourced, not run).
# A sandbox cluster on a free port, run as `postgres` when we are root, and a timer that
# records wall time and peak RSS of a command with /usr/bin/time -v.

bench_setup() {
  root=$(cd "$(dirname "$0")/.." && pwd)
  "$root/scripts/install-deps.sh" >/dev/null
  command -v /usr/bin/time >/dev/null || apt-get install -y -qq time >/dev/null
  if [ -n "${BENCH_PGDR_BIN:-}" ]; then
    # A ready binary (e.g. one built elsewhere): no build. (Not PGDR_*: pgdr refuses
    # unknown PGDR_ variables.)
    [ -x "$BENCH_PGDR_BIN" ] || { echo "BENCH_PGDR_BIN=$BENCH_PGDR_BIN is not an executable" >&2; exit 1; }
    pgdr=$BENCH_PGDR_BIN
  else
    (cd "$root" && cargo build --release --quiet)
    pgdr="${CARGO_TARGET_DIR:-$root/target}/release/pgdr"
  fi
  bindir=$(pg_config --bindir 2>/dev/null || true)
  [ -x "$bindir/initdb" ] || bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  work=${BENCH_DIR:-/var/tmp/pgdr-bench}
  rm -rf "$work"; mkdir -p "$work"; chmod 755 "$work"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  results="$work/results.tsv"; : > "$results"
}

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# The same as a command prefix, for use under /usr/bin/time.
if [ "$(id -u)" -eq 0 ]; then pgrun=(runuser -u postgres --); else pgrun=(); fi

bench_cluster() {  # bench_cluster [extra postgres -c settings...]
  mkdir -p "$work/data" "$work/sock"; [ "$(id -u)" -eq 0 ] && chown postgres: "$work/data" "$work/sock" "$work"
  as_pg "$bindir/initdb" -D "$work/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
  local opts="-p $port -k $work/sock -c listen_addresses=127.0.0.1"
  for s in "$@"; do opts="$opts -c $s"; done
  as_pg "$bindir/pg_ctl" -D "$work/data" -l "$work/server.log" -w -o "$opts" start >/dev/null
  trap 'as_pg "$bindir/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true; kill $(jobs -p) 2>/dev/null || true' EXIT
}

export PGHOST=127.0.0.1 PGUSER=postgres
psql_q() { "$bindir/psql" -X -q -At -v ON_ERROR_STOP=1 -p "$port" "$@"; }

# timed NAME SIZE_PATH_OR_- command...   → appends "name wall_s rss_kib size_bytes" to results
timed() {
  local name=$1 sizepath=$2; shift 2
  local tfile="$work/time.$$"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  if ! /usr/bin/time -v -o "$tfile" "$@" > "$work/out.$$" 2> "$work/err.$$"; then
    echo "benchmark step $name failed:" >&2; cat "$work/err.$$" "$tfile" >&2; exit 1
  fi
  local wall rss size=0
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$tfile")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tfile")
  if [ "$sizepath" != "-" ]; then size=$(du -sb "$sizepath" | awk '{print $1}'); fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$wall" "$rss" "$size" >> "$results"
  printf '  %-34s %8.2f s  %8d KiB RSS  %12s bytes\n' "$name" "$wall" "$rss" "$size"
}

col() { awk -F'\t' -v n="$1" -v c="$2" '$1==n {print $c}' "$results"; }
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.2f}' if b else 'n/a')" "$1" "$2"; }
