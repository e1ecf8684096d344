#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine, then runs the
# formatting and lint gates and every test. Safe to run again; installs are skipped when present.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain for wasm32-wasip1 filters"
if command -v rustup >/dev/null 2>&1; then
  rustup target add wasm32-wasip1
  rustup component add clippy rustfmt >/dev/null 2>&1 || true
elif ! [ -d /usr/lib/wasm32-wasi ]; then
  # Debian fallback (see DESIGN.md): rustc-web + build-std.
  apt-get update
  apt-get install -y rustc-web cargo-web rust-web-src lld-22 wasi-libc
fi

step "system packages the tests use (PostgreSQL, headless Chromium)"
missing=()
command -v pg_virtualenv >/dev/null 2>&1 || missing+=(postgresql postgresql-common)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

step "format"
cargo fmt --all -- --check

step "lint (host crates, and filters natively)"
cargo clippy --workspace --all-targets -- -D warnings

step "lint (filters for wasm32-wasip1)"
filters=()
for manifest in filters/*/Cargo.toml filters/*/*/Cargo.toml; do
  [ -f "$manifest" ] || continue
  grep -q 'cdylib' "$manifest" || continue
  filters+=(-p "$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -1)")
done
cargo clippy --target wasm32-wasip1 "${filters[@]}" -- -D warnings

step "tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# A throwaway PostgreSQL cluster for the catalog's PostgreSQL tests (each test makes its own
# database in it); pg_virtualenv removes the cluster afterwards.
pg_virtualenv bash -c 'WASMTRACE_TEST_POSTGRES_URL="postgres://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/$PGDATABASE" cargo test --workspace' 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one summary per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
