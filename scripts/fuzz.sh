#!/usr/bin/env bash
# Runs every fuzz target for a bounded time each and prints a table: target, executions, corpus
# size, findings. Installs what it needs first (the nightly toolchain, cargo-fuzz).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target: the first argument, else $FUZZ_SECONDS, else 60. TARGETs (e.g. `config`,
# `header_map`) pick a subset; the default is every target of every fuzz crate:
#   filters/trace-core/fuzz        traceparent, tracestate, b3, jaeger, baggage
#   host/fuzz                      header_map, property_path, config
#   services/trace-collector/fuzz  otlp_protobuf, otlp_json, zipkin
# Exit status: 0 when nothing was found, 1 when a target crashed (or failed to build).
#
# Where things go (none of it is committed; each fuzz crate's .gitignore says so):
#   <crate>/fuzz/corpus/<target>/     inputs that reached new code (reused by the next run)
#   <crate>/fuzz/artifacts/<target>/  crash-*, timeout-*, oom-* reproducers
#   target/fuzz/                      the nightly build (never shared with the stable target/),
#                                     and target/fuzz/logs/<target>.log
# Reproduce a finding: cargo +nightly fuzz run -s none --fuzz-dir <crate>/fuzz \
#   --target-dir target/fuzz <target> <crate>/fuzz/artifacts/<target>/crash-...
#
# Sanitizer: none by default (`-s none`). Every crate of ours forbids unsafe code, so what a
# fuzzer can find in them is a panic, an abort (stack overflow), a hang or runaway memory, and
# libFuzzer sees all of those without AddressSanitizer; coverage guidance comes from cargo-fuzz's
# sancov flags either way. ASan would roughly halve executions per second and needs its own
# build. To check the unsafe code of dependencies too, run with FUZZ_SANITIZER=address (built
# in target/fuzz-address).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
if [ "$#" -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
  seconds="$1"
  shift
fi
wanted=("$@")
sanitizer="${FUZZ_SANITIZER:-none}"
if [ "$sanitizer" = none ]; then
  target_dir="$PWD/target/fuzz"
else
  target_dir="$PWD/target/fuzz-$sanitizer"
fi
crates=(filters/trace-core/fuzz host/fuzz services/trace-collector/fuzz)

step() { printf '\n==> %s\n' "$*"; }

step "nightly toolchain and cargo-fuzz"
if ! command -v rustup >/dev/null 2>&1; then
  echo "rustup is required (https://rustup.rs): cargo-fuzz needs a nightly toolchain" >&2
  exit 1
fi
rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cargo fuzz --version

fuzz() { cargo +nightly fuzz "$@"; }
build_flags=(-s "$sanitizer" --target-dir "$target_dir")

# Seed inputs, read but never written by libFuzzer: the bootstrap files the repository already
# has, and one small valid request per collector format (written here, not committed).
seed_dir="$target_dir/seeds"
write_seeds() {
  mkdir -p "$seed_dir/otlp_protobuf" "$seed_dir/otlp_json" "$seed_dir/zipkin"
  # ExportTraceServiceRequest { resource_spans: [{ scope_spans: [{ spans: [{ trace_id, span_id,
  # name: "s" }] }] }] }, field by field.
  printf '\x0a\x23\x12\x21\x12\x1f\x0a\x10%b\x12\x08%b\x2a\x01s' \
    '\x5b\x8e\xff\xf7\x98\x03\x81\x03\xd2\x69\xb6\x33\x81\x3f\xc6\x0c' \
    '\xee\xe1\x9b\x7e\xc3\xc1\xb1\x74' >"$seed_dir/otlp_protobuf/one-span.pb"
  cat >"$seed_dir/otlp_json/one-span.json" <<'JSON'
{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"gallery"}}]},
"scopeSpans":[{"scope":{"name":"s"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c",
"spanId":"eee19b7ec3c1b174","parentSpanId":"eee19b7ec3c1b173","name":"GET /","kind":2,
"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000",
"attributes":[{"key":"http.status_code","value":{"intValue":"200"}},{"key":"ok","value":{"boolValue":true}},
{"key":"d","value":{"doubleValue":1.5}},{"key":"a","value":{"arrayValue":{"values":[{"stringValue":"x"}]}}},
{"key":"kv","value":{"kvlistValue":{"values":[{"key":"k","value":{"bytesValue":"AQI="}}]}}}],
"events":[{"timeUnixNano":"1544712660500000000","name":"e","attributes":[]}],
"links":[{"traceId":"5b8efff798038103d269b633813fc60d","spanId":"eee19b7ec3c1b175"}],
"status":{"code":2,"message":"boom"}}]}]}]}
JSON
  cat >"$seed_dir/zipkin/two-spans.json" <<'JSON'
[{"traceId":"5b8efff798038103d269b633813fc60c","id":"eee19b7ec3c1b174","parentId":"eee19b7ec3c1b173",
"name":"get /","kind":"SERVER","timestamp":1544712660000000,"duration":1000,
"localEndpoint":{"serviceName":"gallery"},"tags":{"http.status_code":"200","error":"boom"},
"annotations":[{"timestamp":1544712660500000,"value":"e"}]},
{"traceId":"d269b633813fc60c","id":"eee19b7ec3c1b175","kind":"CLIENT"}]
JSON
}
seeds() {
  case "$1" in
    config) echo host/config/tests/fixtures deploy/envoy deploy/examples deploy/k8s/components/sidecar/bootstraps ;;
    otlp_protobuf | otlp_json | zipkin) echo "$seed_dir/$1" ;;
  esac
}

selected() {
  [ "${#wanted[@]}" -eq 0 ] && return 0
  local name
  for name in "${wanted[@]}"; do
    [ "$name" = "$1" ] && return 0
  done
  return 1
}

mkdir -p "$target_dir/logs"
write_seeds
rows=()
failed=0
for crate in "${crates[@]}"; do
  if [ ! -f "$crate/Cargo.toml" ]; then
    echo "skipping $crate: not present" >&2
    continue
  fi
  targets=()
  while IFS= read -r target; do
    selected "$target" && targets+=("$target")
  done < <(fuzz list --fuzz-dir "$crate")
  [ "${#targets[@]}" -gt 0 ] || continue

  step "build $crate (nightly, sanitizer: $sanitizer)"
  if ! fuzz build "${build_flags[@]}" --fuzz-dir "$crate"; then
    for target in "${targets[@]}"; do
      rows+=("$target|$crate|-|-|build failed")
    done
    failed=1
    continue
  fi

  for target in "${targets[@]}"; do
    step "fuzz $target for ${seconds}s"
    corpus="$crate/corpus/$target"
    artifacts="$crate/artifacts/$target"
    log="$target_dir/logs/$target.log"
    mkdir -p "$corpus" "$artifacts"
    before=$(find "$artifacts" -type f | wc -l)

    dirs=("$corpus")
    for seed in $(seeds "$target"); do
      [ -d "$seed" ] && dirs+=("$seed")
    done
    args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    [ -f "$crate/dicts/$target.dict" ] && args+=(-dict="$crate/dicts/$target.dict")

    status=0
    fuzz run "${build_flags[@]}" --fuzz-dir "$crate" "$target" "${dirs[@]}" -- "${args[@]}" >"$log" 2>&1 || status=$?

    # libFuzzer's final stats, else its last progress line ("#1234 ... corp: 56/789b ...").
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    [ -n "$executions" ] || executions=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    units=$(grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -1 | sed 's/corp: //')
    after=$(find "$artifacts" -type f | wc -l)
    findings=$((after - before))
    if [ "$status" -ne 0 ] && [ "$findings" -eq 0 ]; then
      findings="error (exit $status)"
    fi
    if [ "$findings" != 0 ]; then
      failed=1
      echo "finding in $target (log: $log):"
      grep -E "panicked at|ERROR: libFuzzer|SUMMARY|Test unit written|^Base64" "$log" | head -8 || true
    fi
    rows+=("$target|$crate|${executions:-0}|${units:-0}|$findings")
  done
done

step "results (${seconds}s per target, sanitizer: $sanitizer)"
printf '%-15s %-30s %12s %16s  %s\n' target crate executions 'corpus (n/size)' findings
for row in "${rows[@]}"; do
  IFS='|' read -r target crate executions units findings <<<"$row"
  printf '%-15s %-30s %12s %16s  %s\n' "$target" "$crate" "$executions" "$units" "$findings"
done
exit "$failed"
