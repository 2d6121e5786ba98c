#!/usr/bin/env bash
# Fuzz pgdr's parsers of untrusted input with cargo-fuzz (libFuzzer): the stored-object
# decoder, manifests, WAL/LSN/label names, the configuration, schedules, runbooks,
# metrics requests and pg_waldump's lines. Each target runs FUZZ_SECONDS (default 60)
# from its committed corpus in fuzz/corpus/; a crash fails the script and leaves the
# input in fuzz/artifacts/TARGET/ (turn it into a regression test, then commit it to
# the corpus). FUZZ_TARGETS picks targets (default: all).
#
# `scripts/fuzz.sh --ci` (what scripts/test.sh runs): a fixed seed and a fixed number
# of runs per target, sized to about 10-15 s each here, so CI explores the same inputs
# every time — a red CI means the code changed, never that the dice did.
#
# cargo-fuzz needs nightly compiler flags: this machine has only the stable toolchain,
# so RUSTC_BOOTSTRAP=1 lets stable rustc accept them (the same compiler, unlocked).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-60}
ci=false
[ "${1:-}" = "--ci" ] && ci=true
# Runs per target for --ci (each target's speed differs a hundredfold: the object
# decoder runs AES-GCM on every input, the name parsers only compare bytes).
ci_runs() {
  case $1 in
    object) echo 10000 ;; manifest | names | waldump) echo 100000 ;;
    config) echo 60000 ;; schedule | runbook) echo 30000 ;; metrics_request) echo 300000 ;;
    *) echo 20000 ;;
  esac
}
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-/var/tmp/pgdr-target}-fuzz}
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --locked --quiet cargo-fuzz
fi
targets=${FUZZ_TARGETS:-"object manifest names config schedule runbook metrics_request waldump"}
# The address sanitizer where the toolchain ships its runtime; plain libFuzzer otherwise.
sanitizer=address
if ! ls "$(rustc --print sysroot)"/lib/rustlib/x86_64-unknown-linux-gnu/lib/librustc-*_rt.asan.a >/dev/null 2>&1; then
  sanitizer=none
fi
cargo fuzz build --sanitizer "$sanitizer" -O
failed=()
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
  # New inputs go to a scratch directory: the committed corpus stays as committed.
  scratch=$(mktemp -d)
  if $ci; then
    bound=(-runs="$(ci_runs "$t")" -seed=20261205 -max_total_time=120)
  else
    bound=(-max_total_time="$secs")
  fi
  started=$SECONDS
  if cargo fuzz run --sanitizer "$sanitizer" -O "$t" "$scratch" "fuzz/corpus/$t" -- \
      "${bound[@]}" -rss_limit_mb=2048 -print_final_stats=1 >"$scratch.log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$scratch.log" | grep -o '[0-9]*$' || echo '?')
    echo "fuzz $t: $((SECONDS - started)) s, $runs runs, no crash"
  else
    echo "fuzz $t: FAILED — see fuzz/artifacts/$t/"; tail -30 "$scratch.log"
    failed+=("$t")
  fi
  rm -rf "$scratch" "$scratch.log"
done
[ ${#failed[@]} -eq 0 ] || { echo "fuzz: crashes in ${failed[*]}"; exit 1; }
