#!/usr/bin/env bash
# Benchmark, not a test: `pgdr copy` of a physical and a logical backup (pgbench scale
# SCALE, default 20) plus their WAL from one local repository to another, against the
# floor of copying the same repository directory with `cp -a` (which checks nothing).
# pgdr streams each object, checks it against its manifest hash (or opens it), writes it,
# and reads it back from the copy. Prints wall time, throughput and peak RSS, and the ratio.
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
bench_setup
scale=${SCALE:-20}
mkdir -p "$work/pgdr-repo" "$work/copy-repo" "$work/cp-floor"
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
[[repository.copies]]
name = "dr"
url = "file://$work/copy-repo"
[wal]
archive_timeout = 60
TOML
bench_cluster "archive_mode=on" "archive_command='$pgdr --config $work/pgdr.toml wal-push %p'" "wal_level=replica"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$work"
as_pg "$pgdr" --config "$work/pgdr.toml" init >/dev/null
as_pg "$bindir/pgbench" -i -q -s "$scale" -h 127.0.0.1 -p "$port" -U postgres postgres >/dev/null 2>&1
as_pg "$pgdr" --config "$work/pgdr.toml" backup --kind physical >/dev/null
as_pg "$pgdr" --config "$work/pgdr.toml" backup --kind logical >/dev/null
bytes=$(du -sb "$work/pgdr-repo" | cut -f1)
timed "cp -a (floor)" - cp -a "$work/pgdr-repo/bench" "$work/cp-floor/"
timed "pgdr copy" - "${pgrun[@]}" "$pgdr" --config "$work/pgdr.toml" copy --json
echo
printf '%-16s %10s %12s %10s\n' step wall MB/s "peak RSS"
for step in "cp -a (floor)" "pgdr copy"; do
  w=$(col "$step" 2); r=$(col "$step" 3)
  printf '%-16s %9.2fs %12.1f %8s MiB\n' "$step" "$w" "$(python3 -c "print($bytes/1e6/$w)")" "$((r / 1024))"
done
echo "repository: $((bytes / 1000000)) MB; ratio pgdr copy / cp -a: $(ratio "$(col 'pgdr copy' 2)" "$(col 'cp -a (floor)' 2)")"
