// The assemblyscript-probe: a proxy-wasm filter built with the AssemblyScript SDK
// (@solo-io/proxy-runtime), so the host's tests run a filter no Rust SDK had a hand in.
//
// On request headers it copies the route and cluster the stream was resolved to into
// `x-as-route` / `x-as-cluster` (from `xds.route_name` / `xds.cluster_name`) and the legacy
// top-level spellings into `x-as-legacy-route` / `x-as-legacy-cluster` ("none" when the host
// does not know them), and answers `/as-local` itself with 403. On response headers it copies the
// `content-length` it sees into `x-as-saw-content-length` ("none" when there is none).

// The ABI exports (proxy_abi_version_0_2_0, proxy_on_*, malloc) the host calls.
export * from "@solo-io/proxy-runtime/proxy";

import {
  Context,
  FilterHeadersStatusValues,
  GrpcStatusValues,
  HeaderPair,
  RootContext,
  WasmResultValues,
  registerRootContext,
  send_local_response,
  stream_context,
} from "@solo-io/proxy-runtime";
import { proxy_get_property } from "@solo-io/proxy-runtime/imports";
import { free } from "@solo-io/proxy-runtime/malloc";

/** The body of the local reply on `/as-local`. */
const LOCAL_BODY = "denied by the AssemblyScript probe\n";

/** Where the host writes a property's address and length. */
class PropertyOut {
  data: usize = 0;
  size: usize = 0;
}

const out = new PropertyOut();

/**
 * The property at `path` as text, or null when the host has none. The ABI separates a path's
 * segments with NUL (`xds\0route_name`; `xds.route_name` is one segment, unknown to Envoy too).
 * The SDK's own `get_property` aborts the VM on NotFound, so a probe that asks for a spelling a
 * host may not know calls the host function itself.
 */
function property(path: string): string | null {
  const encoded = String.UTF8.encode(path);
  const result = proxy_get_property(
    changetype<usize>(encoded),
    encoded.byteLength,
    changetype<usize>(out) + offsetof<PropertyOut>("data"),
    changetype<usize>(out) + offsetof<PropertyOut>("size"),
  );
  if (result != WasmResultValues.Ok) {
    return null;
  }
  if (out.size == 0) {
    return "";
  }
  const text = String.UTF8.decodeUnsafe(out.data, out.size);
  // The host allocated the value with the module's `malloc`; give it back.
  free(out.data);
  return text;
}

// No `?:` between managed values in this file: the reference counting of AssemblyScript 0.14 to
// 0.17 releases the value a conditional expression picked twice (a double free the runtime
// aborts on, in `~lib/rt/pure.ts`).
function orNone(value: string | null): string {
  if (value === null) {
    return "none";
  }
  return value!;
}

class ProbeRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new Probe(context_id, this);
  }
}

class Probe extends Context {
  constructor(context_id: u32, root_context: ProbeRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const request = stream_context.headers.request;
    request.add("x-as-route", orNone(property("xds\0route_name")));
    request.add("x-as-cluster", orNone(property("xds\0cluster_name")));
    request.add("x-as-legacy-route", orNone(property("route_name")));
    request.add("x-as-legacy-cluster", orNone(property("cluster_name")));
    if (request.get(":path") == "/as-local") {
      const extra: HeaderPair[] = [
        new HeaderPair(String.UTF8.encode("x-as-local"), String.UTF8.encode("yes")),
      ];
      send_local_response(403, "assemblyscript_probe_denied", String.UTF8.encode(LOCAL_BODY), extra, GrpcStatusValues.InvalidCode);
      return FilterHeadersStatusValues.StopIteration;
    }
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const response = stream_context.headers.response;
    let length = response.get("content-length");
    if (length == "") {
      length = "none";
    }
    response.add("x-as-saw-content-length", length);
    return FilterHeadersStatusValues.Continue;
  }
}

// The root context for the default root_id ("") and for `root_id: assemblyscript_probe`.
registerRootContext((context_id: u32) => { return new ProbeRoot(context_id); }, "");
registerRootContext((context_id: u32) => { return new ProbeRoot(context_id); }, "assemblyscript_probe");
