#!/usr/bin/env python3
"""Turn `cargo bench --bench stack` results into the overhead table of BENCHMARKS.md.

    cargo bench --bench stack | tee /tmp/stack.txt
    python3 benches/report.py [CRITERION_DIR] [--allocs /tmp/stack.txt]

CRITERION_DIR defaults to $CARGO_TARGET_DIR/criterion, else target/criterion. Reads
stack/*/new/estimates.json (criterion's median point estimate and its 95 % interval),
prints ns per request, ns added over `bare`, and each palisade variant's added cost as
a ratio of its anchor's, with the issue-8 target. `--allocs` adds the allocation
counts the bench prints before timing.
"""
import json
import os
import re
import sys
from pathlib import Path

# palisade variant -> (anchor variant, target ratio of added cost)
TARGETS = {
    "palisade/rate_limit": ("anchor/tower_governor", 1.0),
    "palisade/metrics": ("anchor/axum_prometheus", 0.5),
    "palisade/security_headers": ("anchor/set_response_header_x8", 1 / 3),
    "palisade/access_log": ("anchor/trace_json", 0.5),
    "palisade/access_log+request_id": ("anchor/trace_json", 0.5),
    "palisade/access_log@telemetry": ("anchor/trace_json", 0.5),
    "palisade/access_log+request_id@telemetry": ("anchor/trace_json", 0.5),
    "palisade/full": ("anchor/all", 1 / 3),
    "palisade/full@telemetry": ("anchor/all", 1 / 3),
    # The floor of a `tracing`-based access log (spans and events, nothing formatted).
    "palisade/full@registry": ("anchor/all", 1 / 3),
    "palisade/full-nolog": ("anchor/all", None),
    # Each layer on its own, without the stack (as the anchors run theirs).
    "layer/rate_limit": ("anchor/tower_governor", 1.0),
    "layer/metrics": ("anchor/axum_prometheus", 0.5),
    "layer/security_headers": ("anchor/set_response_header_x8", 1 / 3),
    "layer/access_log@telemetry": ("anchor/trace_json", 0.5),
}


def main(argv):
    allocs_file = None
    args = []
    it = iter(argv)
    for a in it:
        if a == "--allocs":
            allocs_file = next(it)
        else:
            args.append(a)
    if args:
        root = Path(args[0])
    else:
        root = Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "criterion"
    group = root / "stack"
    if not group.is_dir():
        sys.exit(f"no criterion results under {group}: run `cargo bench --bench stack` first")

    est = {}
    for d in sorted(group.iterdir()):
        f, meta = d / "new" / "estimates.json", d / "new" / "benchmark.json"
        if not f.is_file() or not meta.is_file():
            continue
        name = json.loads(meta.read_text())["function_id"]
        e = json.loads(f.read_text())["median"]
        ci = e["confidence_interval"]
        est[name] = (e["point_estimate"], ci["lower_bound"], ci["upper_bound"])

    allocs = {}
    if allocs_file:
        for line in open(allocs_file, encoding="utf-8"):
            m = re.match(r"\s+(\S+)\s+([\d.]+) allocs/req\s+([\d.]+) bytes/req(?:\s+([\d.]+) log bytes/req)?", line)
            if m:
                allocs[m.group(1)] = (float(m.group(2)), float(m.group(3)), float(m.group(4) or 0))

    if "bare" not in est:
        sys.exit("no `bare` result: the ratios need it")
    bare = est["bare"][0]

    def order(name):
        return (name != "bare", not name.startswith("anchor/"), name)

    print(f"bare: {bare:,.0f} ns/req (criterion median)\n")
    head = "| variant | ns/req (median, 95 % CI) | Δ ns over bare |"
    sep = "|---|---|---|"
    if allocs:
        head += " allocs/req | bytes/req | log bytes/req |"
        sep += "---|---|---|"
    print(head)
    print(sep)
    for name in sorted(est, key=order):
        p, lo, hi = est[name]
        row = f"| {name} | {p:,.0f} ({lo:,.0f}–{hi:,.0f}) | {p - bare:+,.0f} |"
        if allocs:
            a = allocs.get(name)
            row += f" {a[0]:.0f} | {a[1]:,.0f} | {a[2]:,.0f} |" if a else " – | – | – |"
        print(row)

    print("\n| palisade variant | Δ ns | anchor | anchor Δ ns | ratio | target | met |")
    print("|---|---|---|---|---|---|---|")
    for name, (anchor, target) in TARGETS.items():
        if name not in est or anchor not in est:
            continue
        d, da = est[name][0] - bare, est[anchor][0] - bare
        ratio = d / da if da > 0 else float("nan")
        if target is None:
            t, met = "–", "–"
        else:
            t = f"≤ {target:.2f}"
            met = "yes" if ratio <= target else "no"
        print(f"| {name} | {d:+,.0f} | {anchor} | {da:+,.0f} | {ratio:.2f} | {t} | {met} |")


if __name__ == "__main__":
    main(sys.argv[1:])
