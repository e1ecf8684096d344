#!/usr/bin/env bash
# Rolls a new version of the filters out to the gallery in Kubernetes without a failed request.
#
#   deploy/k8s/rollout-filter.sh wasmtrace   rebuild, update the filter ConfigMaps in place, wait
#                                            until every wasmtrace sidecar has hot-swapped to the
#                                            new module (checked on each pod's admin API)
#   deploy/k8s/rollout-filter.sh envoy       rebuild, update the ConfigMaps, restart the pods
#                                            (Envoy reads modules at start; pods roll one by one)
#   deploy/k8s/rollout-filter.sh istio REPO  build and push the trace filter image to REPO, then
#                                            point every trace WasmPlugin at its digest (url and
#                                            sha256); istiod pushes it to the sidecars
#
# Environment: NAMESPACE (default gallery), TIMEOUT seconds (default 300).
set -euo pipefail
cd "$(dirname "$0")/../.."

namespace=${NAMESPACE:-gallery}
timeout=${TIMEOUT:-300}
variant=${1:-}

step() { printf '==> %s\n' "$*"; }

update_configmaps() {
  scripts/build-filters.sh
  step "updating the filter ConfigMaps in place (kubectl apply -k deploy/k8s/overlays/$1)"
  kubectl apply -k "deploy/k8s/overlays/$1"
}

# The sha256 each wasmtrace sidecar serves for `trace_inbound`, one line per pod.
served_digests() {
  local pod admin
  for pod in $(kubectl -n "$namespace" get pods -l app.kubernetes.io/part-of=gallery -o name); do
    case "$pod" in
      *gallery-api*) admin=9901 ;;
      *image-catalog*) admin=9902 ;;
      *) admin=9903 ;;
    esac
    kubectl -n "$namespace" port-forward "$pod" "19000:$admin" >/dev/null 2>&1 &
    local forward=$!
    sleep 1
    curl -fsS http://127.0.0.1:19000/plugins |
      grep -o '"name":"trace_inbound"[^}]*"sha256":"[0-9a-f]*"' | grep -o '[0-9a-f]\{64\}' || echo "unreachable"
    kill "$forward" 2>/dev/null || true
    wait "$forward" 2>/dev/null || true
  done
}

case "$variant" in
  wasmtrace)
    update_configmaps wasmtrace
    want=$(sha256sum target/wasm/trace-filter.wasm | cut -d' ' -f1)
    step "waiting for every sidecar to serve trace-filter $want (the kubelet refreshes ConfigMap volumes within about a minute)"
    deadline=$((SECONDS + timeout))
    until served=$(served_digests) && ! grep -qv "^$want$" <<<"$served"; do
      if ((SECONDS > deadline)); then
        echo "not every sidecar swapped within ${timeout}s:" >&2
        echo "$served" >&2
        exit 1
      fi
      sleep 5
    done
    step "every sidecar serves the new trace filter"
    ;;
  envoy)
    update_configmaps envoy
    step "restarting the gallery pods (one at a time, as each Deployment's strategy allows)"
    kubectl -n "$namespace" rollout restart deployment -l app.kubernetes.io/part-of=gallery
    for deployment in gallery-api image-catalog image-store; do
      kubectl -n "$namespace" rollout status "deployment/$deployment" --timeout="${timeout}s"
    done
    ;;
  istio)
    repo=${2:?usage: rollout-filter.sh istio REPO (e.g. ghcr.io/you/trace-filter)}
    tag=$(date +%Y%m%d%H%M%S)
    step "building and pushing $repo:$tag"
    docker build -f deploy/docker/Dockerfile --target trace-filter -t "$repo:$tag" .
    docker push "$repo:$tag"
    digest=$(docker inspect --format '{{index .RepoDigests 0}}' "$repo:$tag" | sed 's/.*@sha256://')
    step "pointing the WasmPlugins at $repo@sha256:$digest"
    for plugin in $(kubectl -n "$namespace" get wasmplugins -l app.kubernetes.io/part-of=gallery -o name); do
      kubectl -n "$namespace" patch "$plugin" --type merge \
        -p "{\"spec\":{\"url\":\"oci://$repo@sha256:$digest\",\"sha256\":\"$digest\"}}"
    done
    ;;
  *)
    sed -n '2,14p' "$0" >&2
    exit 2
    ;;
esac
