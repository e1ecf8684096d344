"""Checks rendered Kubernetes manifests against the Kubernetes OpenAPI schemas, strictly.

Each document of each file (e.g. `kubectl kustomize deploy/k8s/overlays/wasmtrace` saved to a
file) is validated with the `kubernetes-validate` package's strict schemas for every Kubernetes
version given (an unknown field, a wrong type or a missing required field fails). Istio custom
resources go to `istio_crd.mjs` beside this script, which checks them against Istio's CRD
schemas. A kind neither knows fails: nothing is waved through.

Usage: python k8s_schema.py [--kubernetes 1.33,1.37] FILE...   (exit 0: all valid)
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CUSTOM_GROUPS = ("istio.io",)


def documents(path):
    with open(path, encoding="utf-8") as handle:
        for document in yaml.safe_load_all(handle):
            if document:
                yield document


def name_of(document):
    metadata = document.get("metadata") or {}
    return f"{document.get('kind', '?')}/{metadata.get('name', '?')}"


def is_custom(document):
    group = str(document.get("apiVersion", "")).split("/")[0]
    return any(group == g or group.endswith("." + g) for g in CUSTOM_GROUPS)


def check_core(document, versions):
    problems = []
    for version in versions:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = "/".join(str(p) for p in error.path) or "(root)"
            problems.append(f"Kubernetes {version}: at {where}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"Kubernetes {version} has no {document.get('apiVersion')} {document.get('kind')}")
    return problems


def check_custom(resources):
    """Runs istio_crd.mjs on the custom resources; returns (ok, its output)."""
    if not resources:
        return True, ""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(resources, handle)
        path = handle.name
    try:
        result = subprocess.run(
            ["node", os.path.join(HERE, "istio_crd.mjs"), path],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return False, "node is not installed (the Istio CRD check needs it)\n"
    finally:
        os.unlink(path)
    return result.returncode == 0, result.stdout + result.stderr


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes", default="1.33,1.37", help="Kubernetes versions, comma-separated")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    versions = [v.strip() for v in args.kubernetes.split(",") if v.strip()]
    failed = False
    custom = []
    for path in args.files:
        try:
            docs = list(documents(path))
        except (OSError, yaml.YAMLError) as error:
            print(f"{path}: cannot read: {error}")
            failed = True
            continue
        for document in docs:
            if not isinstance(document, dict):
                print(f"{path}: a document is not a mapping")
                failed = True
            elif is_custom(document):
                custom.append(document)
            else:
                problems = check_core(document, versions)
                for problem in problems:
                    print(f"{path}: {name_of(document)}: {problem}")
                failed = failed or bool(problems)
                if not problems:
                    print(f"{path}: {name_of(document)}: valid (Kubernetes {', '.join(versions)})")
    ok, output = check_custom(custom)
    sys.stdout.write(output)
    return 0 if ok and not failed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
