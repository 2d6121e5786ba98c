#!/usr/bin/env bash
# Install what pgdr's tests and quickstart need, if missing: PostgreSQL server binaries
# (initdb, pg_ctl, postgres, pg_dump, pg_restore, pgbench), PgBouncer, and the local
# S3-compatible server (moto >= 5.2.5; 5.2.1 breaks aws-sdk-s3 multipart).
# Idempotent; safe to run on every CI start.
set -euo pipefail

need_apt=()
pg_bindir() {
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir; return
  fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}
bindir=$(pg_bindir || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ] || [ ! -x "$bindir/pgbench" ]; then
  need_apt+=(postgresql postgresql-contrib)
fi
command -v pgbouncer >/dev/null 2>&1 || need_apt+=(pgbouncer)
# promtool validates the shipped Prometheus alert rules.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# Tests: a TLS certificate (openssl), a full-disk tmpfs (mount), tarballs (tar).
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v mount >/dev/null 2>&1 || need_apt+=(mount)
command -v tar >/dev/null 2>&1 || need_apt+=(tar)
command -v strace >/dev/null 2>&1 || need_apt+=(strace)
# The report page's browser test (tests/operations.rs): headless Chromium.
command -v chromium-headless-shell >/dev/null 2>&1 || command -v chromium >/dev/null 2>&1 \
  || need_apt+=(chromium-headless-shell)
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: need root to apt-get install ${need_apt[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # No questions: keep existing configuration files, take defaults otherwise.
  apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${need_apt[@]}" >/dev/null
fi
# The postgres OS user runs server processes when we are root.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

moto_ok() {
  python3 - <<'PY' 2>/dev/null
import importlib.metadata as m
v = tuple(int(x) for x in m.version("moto").split(".")[:3])
import flask, werkzeug  # the server extra
raise SystemExit(0 if v >= (5, 2, 5) else 1)
PY
}
if ! moto_ok || ! command -v moto_server >/dev/null 2>&1; then
  python3 -m pip install -q --disable-pip-version-check "moto[server]>=5.2.5" 2>&1 | grep -v "Running pip as the 'root' user" || true
  # A system Python that is "externally managed" (PEP 668) needs to be told.
  moto_ok || python3 -m pip install -q --disable-pip-version-check --break-system-packages "moto[server]>=5.2.5" 2>&1 \
    | grep -v "Running pip as the 'root' user" || true
fi
moto_ok || { echo "install-deps: moto >= 5.2.5 with its server extra is not installed" >&2; exit 1; }

echo "install-deps: PostgreSQL tools in $(pg_bindir); $(pgbouncer --version 2>/dev/null | head -n 1); moto $(python3 -c 'import importlib.metadata as m; print(m.version("moto"))')"
