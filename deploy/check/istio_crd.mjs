// Validates Istio custom resources against Istio's CRD schemas, as packaged by
// `@kubernetes-models/istio` (validators and TypeScript types generated from the CRDs' OpenAPI v3
// schemas). Two checks per resource:
//   1. the schema validator: types, enums, patterns, required fields, lengths;
//   2. the generated type, through the TypeScript compiler: an unknown field anywhere (a typo
//      that the API server would reject under kubectl's strict field validation) is an error.
//
// Usage: node istio_crd.mjs RESOURCES.json   (a JSON array; exit 0 when all are valid)

import { readFileSync } from "node:fs";
import ts from "typescript";

/** The resource kinds this check knows: apiVersion/kind -> generated model module and type. */
const KINDS = {
  "extensions.istio.io/v1alpha1/WasmPlugin": {
    module: "@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin",
    type: "IWasmPlugin",
    model: "WasmPlugin",
  },
};

function describe(resource) {
  return `${resource.kind ?? "?"}/${resource.metadata?.name ?? "?"}`;
}

async function schemaErrors(resource, kind) {
  const module = await import(kind.module);
  try {
    new module[kind.model](resource).validate();
    return [];
  } catch (error) {
    return [String(error.message ?? error)];
  }
}

/** Type-checks `const resource: IType = <literal>` for each resource, in memory. */
function unknownFieldErrors(resources) {
  const here = new URL(".", import.meta.url).pathname;
  const sources = resources.map(({ resource, kind }, index) => {
    const text =
      `import type { ${kind.type} } from "${kind.module}";\n` +
      `export const resource${index}: ${kind.type} = ${JSON.stringify(resource, null, 2)};\n`;
    // Beside this script, so the models resolve from its node_modules.
    return { name: `${here}resource${index}.check.ts`, text, resource };
  });
  const options = {
    strict: true,
    noEmit: true,
    module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler,
    target: ts.ScriptTarget.ES2022,
    skipLibCheck: true,
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const readFile = host.readFile.bind(host);
  const getSourceFile = host.getSourceFile.bind(host);
  const fileExists = host.fileExists.bind(host);
  const virtual = new Map(sources.map((s) => [s.name, s.text]));
  host.fileExists = (name) => virtual.has(name) || fileExists(name);
  host.readFile = (name) => virtual.get(name) ?? readFile(name);
  host.getSourceFile = (name, version, ...rest) =>
    virtual.has(name)
      ? ts.createSourceFile(name, virtual.get(name), version, true)
      : getSourceFile(name, version, ...rest);
  host.getCurrentDirectory = () => here;
  const program = ts.createProgram(
    sources.map((s) => s.name),
    options,
    host,
  );
  const errors = new Map();
  for (const diagnostic of ts.getPreEmitDiagnostics(program)) {
    const file = diagnostic.file?.fileName;
    const source = sources.find((s) => s.name === file);
    const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, " ");
    const key = source ? describe(source.resource) : "type check";
    errors.set(key, [...(errors.get(key) ?? []), message]);
  }
  return errors;
}

async function main(path) {
  const resources = JSON.parse(readFileSync(path, "utf8"));
  let failed = false;
  const known = [];
  for (const resource of resources) {
    const kind = KINDS[`${resource.apiVersion}/${resource.kind}`];
    if (!kind) {
      console.log(`${describe(resource)}: no schema for ${resource.apiVersion} ${resource.kind}`);
      failed = true;
      continue;
    }
    for (const error of await schemaErrors(resource, kind)) {
      console.log(`${describe(resource)}: ${error}`);
      failed = true;
    }
    known.push({ resource, kind });
  }
  for (const [name, messages] of unknownFieldErrors(known)) {
    for (const message of messages) {
      console.log(`${name}: ${message}`);
    }
    failed = true;
  }
  if (!failed) {
    for (const { resource } of known) {
      console.log(`${describe(resource)}: valid against the ${resource.apiVersion} CRD schema`);
    }
  }
  process.exit(failed ? 1 : 0);
}

if (process.argv.length !== 3) {
  console.error("usage: node istio_crd.mjs RESOURCES.json");
  process.exit(2);
}
await main(process.argv[2]);
