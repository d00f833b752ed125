"""Fails when a dependency that palisade's library builds with (all features, normal
and build dependencies, transitively) declares a `rust-version` newer than palisade's.

CI cannot install the MSRV toolchain itself (no network beyond the package registries),
so the MSRV claim rests on this check, on clippy's `incompatible_msrv` lint (standard
library APIs newer than `rust-version`) and on the edition's own floor.
Usage: cargo metadata --format-version 1 --all-features --locked | python3 .ci/msrv.py
"""

import json
import sys


def version(text):
    return tuple(int(part) for part in text.split(".")) + (0,) * (3 - text.count(".") - 1)


meta = json.load(sys.stdin)
packages = {p["id"]: p for p in meta["packages"]}
root = meta["resolve"]["root"]
floor = packages[root]["rust_version"]
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}

# Walk normal and build edges only: dev-dependencies do not reach users' builds.
seen, todo = set(), [root]
while todo:
    for dep in nodes[todo.pop()]["deps"]:
        if dep["pkg"] not in seen and any(k["kind"] != "dev" for k in dep["dep_kinds"]):
            seen.add(dep["pkg"])
            todo.append(dep["pkg"])

newer = sorted(
    f'{packages[p]["name"]} {packages[p]["version"]} (rust-version {packages[p]["rust_version"]})'
    for p in seen
    if packages[p].get("rust_version") and version(packages[p]["rust_version"]) > version(floor)
)
if newer:
    print(f"dependencies that need a Rust newer than palisade's {floor}:", *newer, sep="\n  ")
    sys.exit(1)
print(f"{len(seen)} library dependencies (all features); none declares a rust-version above {floor}")
