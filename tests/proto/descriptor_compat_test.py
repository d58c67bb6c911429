#!/usr/bin/env python3
"""Tests descriptor_compat.py itself: mutated copies of the current v1 protos must be rejected
when the change breaks the contract and accepted when it only adds.

Usage: descriptor_compat_test.py --protoc PROTOC --proto-root proto --baseline DESC PROTO...
Each case copies the protos into a temporary directory, applies one textual edit (which must
match exactly once, so a case cannot silently stop testing anything), compiles the copy and
compares it with the committed baseline.
"""
import argparse
import os
import re
import shutil
import sys
import tempfile

import descriptor_compat

SCORER = "attnscore/v1/attnscore.proto"

# (name, regex, replacement) applied to SCORER; each must break compatibility.
BREAKING = [
    ("remove a field", r"  bool causal = 8;\n", ""),
    ("renumber a field", r"bool causal = 8;", "bool causal = 99;"),
    ("change a field's scalar type", r"bool causal = 8;", "int32 causal = 8;"),
    ("change a field's message type", r"Tensor value = 6;", "AlibiParams value = 6;"),
    ("change a field's label", r"repeated int32 key_lengths = 10;", "int32 key_lengths = 10;"),
    ("drop proto3 optional presence", r"optional float scale = 9;", "float scale = 9;"),
    ("rename a field", r"bool causal = 8;", "bool is_causal = 8;"),
    ("move fields out of a oneof",
     r"oneof bias \{\n    AlibiParams alibi = 2;\n    RelativeParams relative = 3;\n  \}",
     "AlibiParams alibi = 2;\n  RelativeParams relative = 3;"),
    ("remove an enum value", r"  BSHD = 2;[^\n]*\n", ""),
    ("rename an enum value", r"BFLOAT16 = 3;", "BF16 = 3;"),
    ("renumber an enum value", r"BFLOAT16 = 3;", "BFLOAT16 = 4;"),
    ("rename a message", r"\bTiming timing\b|\bmessage Timing\b",
     lambda m: m.group(0).replace("Timing", "Timings", 1)),
    ("rename an enum", r"\benum Output\b|\brepeated Output\b|\bOutput output\b",
     lambda m: m.group(0).replace("Output", "OutputKind")),
    ("remove a method", r"  rpc ListModels\(ListModelsRequest\) returns \(ListModelsResponse\);\n",
     ""),
    ("rename a method", r"rpc GetServerInfo\(", "rpc ServerInfoGet("),
    ("change a method's input type", r"rpc ListModels\(ListModelsRequest\)",
     "rpc ListModels(GetServerInfoRequest)"),
    ("change a method's output type", r"returns \(ListModelsResponse\)", "returns (ServerInfo)"),
    ("change a method's client streaming", r"rpc ScoreStream\(stream ScoreRequest\)",
     "rpc ScoreStream(ScoreRequest)"),
    ("change a method's server streaming", r"returns \(stream ScoreResponse\)",
     "returns (ScoreResponse)"),
    ("rename the service", r"service AttentionScorer \{", "service Scorer {"),
    ("change the package", r"package attnscore\.v1;", "package attnscore.v2;"),
]

# Each must stay compatible.
COMPATIBLE = [
    ("no change", r"syntax = \"proto3\";", 'syntax = "proto3";'),
    ("edit comments", r"// Element type of a tensor's bytes \(little-endian\)\.",
     "// The element type of a tensor's bytes."),
    ("add a field", r"  bytes data = 3;\n", "  bytes data = 3;\n  string name = 15;\n"),
    ("add an enum value", r"  BFLOAT16 = 3;([^\n]*)\n", "  BFLOAT16 = 3;\\1\n  FLOAT64 = 4;\n"),
    ("add a message", r"\Z", "\nmessage Extra {\n  int32 x = 1;\n}\n"),
    ("add an enum", r"\Z", "\nenum Color {\n  COLOR_UNSPECIFIED = 0;\n}\n"),
    ("add a method", r"service AttentionScorer \{\n",
     "service AttentionScorer {\n  rpc Ping(ListModelsRequest) returns (ListModelsResponse);\n"),
    ("add a service", r"\Z",
     "\nservice Extra2 {\n  rpc X(ListModelsRequest) returns (ListModelsResponse);\n}\n"),
]


def mutated_findings(args, pattern, replacement):
    """Copies the protos, applies the edit once to SCORER, returns the breaking changes."""
    with tempfile.TemporaryDirectory(prefix="attnscore_compat_") as root:
        for proto in args.protos:
            os.makedirs(os.path.join(root, os.path.dirname(proto)), exist_ok=True)
            shutil.copy(os.path.join(args.proto_root, proto), os.path.join(root, proto))
        path = os.path.join(root, SCORER)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        matches = len(re.findall(pattern, text))
        # The renames touch a declaration and its uses; everything else edits one place.
        if matches < 1 or (matches > 1 and not callable(replacement)):
            raise AssertionError(f"pattern {pattern!r} matches {matches} times")
        with open(path, "w", encoding="utf-8") as f:
            f.write(re.sub(pattern, replacement, text))
        current = descriptor_compat.compile_protos(args.protoc, root, args.protos)
    return descriptor_compat.breaking_changes(
        descriptor_compat.load_descriptor_set(args.baseline), current)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--protoc", default="protoc")
    parser.add_argument("--proto-root", required=True)
    parser.add_argument("--baseline", required=True)
    parser.add_argument("protos", nargs="+")
    args = parser.parse_args()
    if SCORER not in args.protos:
        raise SystemExit(f"{SCORER} must be among the protos")

    failures = []
    for name, pattern, replacement in BREAKING:
        findings = mutated_findings(args, pattern, replacement)
        print(f"[breaking]   {name}: {'; '.join(findings) or 'NOT DETECTED'}")
        if not findings:
            failures.append(f"breaking change not detected: {name}")
    for name, pattern, replacement in COMPATIBLE:
        findings = mutated_findings(args, pattern, replacement)
        print(f"[compatible] {name}: {'; '.join(findings) or 'ok'}")
        if findings:
            failures.append(f"compatible change rejected: {name}: {findings}")
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
