#!/usr/bin/env bash
# Builds the filters the deploy files load, release and size-optimised, with `wasmtrace build`:
#   target/wasm/{trace,request-id,tagging}-filter.wasm    deploy/envoy/*.yaml (Envoy or wasmtrace)
#   deploy/k8s/components/sidecar/filters/*.wasm         the Kubernetes filter ConfigMaps
# Run from anywhere; installs the wasm32-wasip1 target with rustup when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v rustup >/dev/null 2>&1; then
  rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
fi
mkdir -p target/wasm deploy/k8s/components/sidecar/filters
for filter in trace-filter request-id-filter tagging-filter; do
  cargo run --quiet -p wasmtrace -- build "filters/$filter" \
    --target-dir target/wasm-filters --out "target/wasm/$filter.wasm"
  cp "target/wasm/$filter.wasm" "deploy/k8s/components/sidecar/filters/$filter.wasm"
done
ls -l target/wasm/*.wasm
