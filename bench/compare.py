#!/usr/bin/python3
"""Compares two `make bench` reports (bench/results/*.json) and flags every ratio that fell by
more than 20%: scoring speed-ups over the literal port, the share of the sgemm rate, the
transport's speed-ups over the naive echo (and 16-bit outputs' over float32), and the
end-to-end speed-ups over the Python peer. Ratios, not times, so reports from different runs of
the same machine kind compare; a different CPU model is reported as a warning.

usage: compare.py OLD.json NEW.json [--threshold 0.2]
Exit status: 0 when nothing fell by more than the threshold, 1 otherwise, 2 on unreadable input.
"""
from __future__ import annotations

import argparse
import json
import sys


def ratios(report: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in report.get("scoring", []):
        out[f"scoring {row['case']}"] = row["speedup"]
    sgemm = report.get("sgemm")
    if sgemm:
        out["ALiBi logits share of sgemm"] = sgemm["share"]
    transport = report.get("transport") or {}
    for row in transport.get("rows", []):
        out[f"transport {row['case']} vs naive echo"] = row["speedup"]
    for row in transport.get("halving", []):
        out[f"transport {row['case']}: float32 time / this"] = row["ratio"]
    e2e = report.get("e2e") or {}
    for row in e2e.get("unary", []):
        out[f"e2e {row['case']}"] = row["speedup"]
    if e2e.get("decode"):
        out["e2e decode preset c=64"] = e2e["decode"]["speedup"]
    if e2e.get("batching"):
        out["e2e batching on / off, decode c=64"] = e2e["batching"]["throughput_ratio"]
    return out


def compare(old: dict, new: dict, threshold: float) -> tuple[list[str], list[str]]:
    """Lines of the comparison table, and the names of the ratios that fell."""
    old_ratios, new_ratios = ratios(old), ratios(new)
    lines, fell = [], []
    for name in sorted(set(old_ratios) | set(new_ratios)):
        before, after = old_ratios.get(name), new_ratios.get(name)
        if before is None or after is None:
            lines.append(f"{name:60s} {'-' if before is None else f'{before:.2f}':>8} "
                         f"{'-' if after is None else f'{after:.2f}':>8}  (only in one report)")
            continue
        change = after / before - 1 if before else 0.0
        flag = change < -threshold
        if flag:
            fell.append(name)
        lines.append(f"{name:60s} {before:8.2f} {after:8.2f} {change * 100:+7.1f}%"
                     f"{'  FELL' if flag else ''}")
    return lines, fell


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--threshold", type=float, default=0.2)
    args = parser.parse_args()
    try:
        with open(args.old) as f:
            old = json.load(f)
        with open(args.new) as f:
            new = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        print(f"compare: {error}", file=sys.stderr)
        return 2
    old_cpu = old.get("cpu", {}).get("model")
    new_cpu = new.get("cpu", {}).get("model")
    if old_cpu != new_cpu:
        print(f"warning: different CPUs: {old_cpu!r} vs {new_cpu!r}")
    lines, fell = compare(old, new, args.threshold)
    print(f"{'ratio':60s} {'old':>8} {'new':>8} {'change':>8}")
    print("\n".join(lines))
    if fell:
        print(f"\n{len(fell)} ratio(s) fell by more than {args.threshold * 100:.0f}%: "
              + ", ".join(fell))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
