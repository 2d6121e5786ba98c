#!/usr/bin/env bash
# pgdr's main job, end to end, on one machine with no cloud account:
#   install what is missing, build, (without PGDR_CONFIG) create a sandbox cluster with
#   sample data, generate a key, back up to ./pgdr-repo, list, restore into a new
#   database and show that the data matches.
# With PGDR_CONFIG set, it backs up and lists that configuration's cluster instead.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

scripts/install-deps.sh
echo "== building pgdr (release)"
cargo build --release --quiet
target_dir=${CARGO_TARGET_DIR:-$root/target}
pgdr="$target_dir/release/pgdr"

if [ -n "${PGDR_CONFIG:-}" ]; then
  "$pgdr" check || true
  "$pgdr" backup --kind logical
  "$pgdr" list
  exit 0
fi

bindir=$(pg_config --bindir 2>/dev/null || true)
[ -x "$bindir/initdb" ] || bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
sandbox="$root/pgdr-sandbox"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

if [ -f "$sandbox/data/postmaster.pid" ]; then
  as_pg "$bindir/pg_ctl" -D "$sandbox/data" -m fast stop >/dev/null 2>&1 || true
fi
rm -rf "$sandbox" "$root/pgdr-repo"
mkdir -p "$sandbox" "$root/pgdr-repo"
[ "$(id -u)" -eq 0 ] && chown postgres: "$sandbox"
echo "== creating a sandbox cluster in $sandbox (port $port)"
as_pg "$bindir/initdb" -D "$sandbox/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
as_pg "$bindir/pg_ctl" -D "$sandbox/data" -l "$sandbox/server.log" -w \
  -o "-p $port -k $sandbox -c listen_addresses=127.0.0.1" start >/dev/null
trap 'as_pg "$bindir/pg_ctl" -D "$sandbox/data" -m fast stop >/dev/null 2>&1 || true' EXIT

psql() { "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"; }
psql -d postgres -c "CREATE DATABASE shop"
"$bindir/pgbench" -i -s 2 -q -h 127.0.0.1 -p "$port" -U postgres shop 2>/dev/null
psql -d shop <<'SQL'
CREATE TABLE customers (id serial PRIMARY KEY, name text, note jsonb, joined timestamptz, balance numeric(12,2), tags text[]);
INSERT INTO customers (name, note, joined, balance, tags)
SELECT 'Kunde ' || i || ' — Zürich', jsonb_build_object('n', i), now() - i * interval '1 hour', i * 1.25, ARRAY['a', 'b' || i]
FROM generate_series(1, 5000) i;
SQL

"$pgdr" init --generate-key "$sandbox/repo.key" >/dev/null
cat > "$sandbox/pgdr.toml" <<TOML
cluster = "sandbox"

[postgres]
url = "postgresql://postgres@127.0.0.1:$port/postgres"
bin_dir = "$bindir"

[repository]
url = "file://$root/pgdr-repo"
key_file = "$sandbox/repo.key"
TOML
export PGDR_CONFIG="$sandbox/pgdr.toml"

echo "== pgdr init / check"
"$pgdr" init
"$pgdr" check
echo "== pgdr backup --kind logical --all"
"$pgdr" backup --kind logical --all --tag quickstart
echo "== pgdr list"
"$pgdr" list
echo "== pgdr restore --database shop --to-database shop_restored"
"$pgdr" restore --backup tag:quickstart --database shop --to-database shop_restored

echo "== comparing table contents (ordered md5 of every row)"
checksum() {
  psql -d "$1" -At -c "SELECT string_agg(t || ':' || h, ' ' ORDER BY t) FROM (
    SELECT 'pgbench_accounts' t, md5(string_agg(a::text, '|' ORDER BY aid)) h FROM pgbench_accounts a UNION ALL
    SELECT 'pgbench_branches', md5(string_agg(b::text, '|' ORDER BY bid)) FROM pgbench_branches b UNION ALL
    SELECT 'pgbench_tellers', md5(string_agg(t::text, '|' ORDER BY tid)) FROM pgbench_tellers t UNION ALL
    SELECT 'customers', md5(string_agg(c::text, '|' ORDER BY id)) FROM customers c) s"
}
a=$(checksum shop); b=$(checksum shop_restored)
echo "source:   $a"
echo "restored: $b"
if [ "$a" = "$b" ]; then
  echo "== OK: the restored database matches the source, table for table"
else
  echo "== MISMATCH between source and restore" >&2
  exit 1
fi
[ "$(id -u)" -eq 0 ] && chown postgres: "$sandbox/repo.key"   # archive_command runs as postgres
echo "== pgdr drill --scenario data-loss (a rehearsal on scratch resources: RTO and RPO)"
"$pgdr" drill --scenario data-loss
echo "== pgdr report (what can be restored, and where the drill's time went)"
"$pgdr" report
"$pgdr" report --html "$root/pgdr-report.html"
echo "Open ./pgdr-report.html in a browser: the page pgdr schedule run serves at /."
echo "The repository is in ./pgdr-repo; the sandbox cluster is stopped (data in ./pgdr-sandbox)."
