"""Checks Envoy bootstrap files against Envoy's own v3 API definitions.

Every file is parsed into `envoy.config.bootstrap.v3.Bootstrap` with protobuf's strict JSON
mapping (the compiled protos come from the `xds-protos` package): an unknown field, a wrong type,
an unknown enum value or an `@type` that names no Envoy message fails, with the file and the
message protobuf gives. Envoy loads YAML the same way (YAML -> JSON -> proto), so what passes here
is what Envoy's parser accepts; Envoy's further semantic checks (protoc-gen-validate rules) are not
run.

Usage: python envoy_schema.py FILE...   (exit 0: all valid; 1: at least one is not)
"""

import importlib
import pkgutil
import sys

import yaml
from google.protobuf import json_format

TYPE_PREFIX = "type.googleapis.com/"


def type_urls(node):
    """Every `@type` in a parsed document."""
    if isinstance(node, dict):
        url = node.get("@type")
        if isinstance(url, str):
            yield url
        for value in node.values():
            yield from type_urls(value)
    elif isinstance(node, list):
        for value in node:
            yield from type_urls(value)


def import_package_of(type_url):
    """Imports every `_pb2` module of the message's proto package, so the JSON parser can resolve
    the `Any`. Unknown packages are left to the parser, which reports the type as unknown."""
    full_name = type_url[len(TYPE_PREFIX):] if type_url.startswith(TYPE_PREFIX) else type_url
    package = full_name.rsplit(".", 1)[0]
    try:
        module = importlib.import_module(package)
    except ImportError:
        return
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")


def check(path):
    """The problems of one file (empty when it is a valid bootstrap)."""
    from envoy.config.bootstrap.v3 import bootstrap_pb2

    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        return [f"cannot read: {error}"]
    if not isinstance(document, dict):
        return ["not a YAML mapping"]
    for url in set(type_urls(document)):
        import_package_of(url)
    try:
        json_format.ParseDict(document, bootstrap_pb2.Bootstrap(), ignore_unknown_fields=False)
    except json_format.ParseError as error:
        # protobuf appends every field the message has; the first line says what is wrong.
        return [str(error).split("\n Available Fields")[0]]
    return []


def main(paths):
    if not paths:
        print("usage: envoy_schema.py FILE...", file=sys.stderr)
        return 2
    failed = False
    for path in paths:
        problems = check(path)
        for problem in problems:
            print(f"{path}: {problem}")
        if problems:
            failed = True
        else:
            print(f"{path}: valid envoy.config.bootstrap.v3.Bootstrap")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
