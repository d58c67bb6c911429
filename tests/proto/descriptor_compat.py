#!/usr/bin/env python3
"""The attnscore v1 API is a contract: compare the current protos with the released descriptor set.

Usage (what ctest runs; see tests/proto/CMakeLists.txt):
  descriptor_compat.py --protoc PROTOC --proto-root proto \
      --baseline proto/attnscore/v1/attnscore_v1.desc.pb attnscore/v1/attnscore.proto

Compiles the given .proto files (paths relative to --proto-root) to a descriptor set with protoc
and compares it with the committed baseline. Exits 1, listing every finding, on a breaking change:
  - a file, message, enum, service or method of the baseline is gone (a rename counts as gone);
  - a field is gone, or its number, name, type (scalar kind or message/enum type), label
    (singular/repeated, proto3 `optional` presence) or oneof changed;
  - an enum value is gone, renamed or renumbered;
  - a method's input type, output type or client/server streaming changed.
Additions (new files, messages, fields, enums, enum values, services, methods) are compatible.
Comments and options are not compared: the baseline carries no source info.

Needs only the protobuf Python package (Debian's python3-protobuf) and protoc.
"""
import argparse
import os
import subprocess
import sys
import tempfile

from google.protobuf import descriptor_pb2

FieldDescriptorProto = descriptor_pb2.FieldDescriptorProto


def compile_protos(protoc, proto_root, protos):
    """Runs protoc over protos (relative to proto_root); returns the FileDescriptorSet."""
    with tempfile.TemporaryDirectory(prefix="attnscore_desc_") as tmp:
        out = os.path.join(tmp, "current.desc.pb")
        subprocess.run([protoc, f"--proto_path={proto_root}", f"--descriptor_set_out={out}",
                        *protos], check=True)
        return load_descriptor_set(out)


def load_descriptor_set(path):
    with open(path, "rb") as f:
        return descriptor_pb2.FileDescriptorSet.FromString(f.read())


def _scope(package):
    return f".{package}" if package else ""


def index_descriptor_set(fds):
    """Maps every file, message, enum and service of fds by its fully qualified name."""
    files, messages, enums, services = {}, {}, {}, {}

    def add_enum(prefix, enum):
        enums[f"{prefix}.{enum.name}"] = enum

    def add_message(prefix, message):
        name = f"{prefix}.{message.name}"
        messages[name] = message
        for nested in message.nested_type:
            add_message(name, nested)
        for enum in message.enum_type:
            add_enum(name, enum)

    for file in fds.file:
        files[file.name] = file
        prefix = _scope(file.package)
        for message in file.message_type:
            add_message(prefix, message)
        for enum in file.enum_type:
            add_enum(prefix, enum)
        for service in file.service:
            services[f"{prefix}.{service.name}"] = service
    return files, messages, enums, services


def _type_name(field):
    if field.type in (FieldDescriptorProto.TYPE_MESSAGE, FieldDescriptorProto.TYPE_ENUM):
        return field.type_name
    return FieldDescriptorProto.Type.Name(field.type)


def _label(field):
    label = FieldDescriptorProto.Label.Name(field.label)
    return f"{label} (proto3 optional)" if field.proto3_optional else label


def _oneof(message, field):
    # Synthetic oneofs (proto3 `optional`) are covered by the label.
    if not field.HasField("oneof_index") or field.proto3_optional:
        return None
    return message.oneof_decl[field.oneof_index].name


def compare_message(name, old, new):
    findings = []
    new_fields = {f.number: f for f in new.field}
    for field in old.field:
        where = f"{name}.{field.name} (= {field.number})"
        current = new_fields.get(field.number)
        if current is None:
            findings.append(f"field {where} removed or renumbered")
            continue
        if current.name != field.name:
            findings.append(f"field {where} renamed to {current.name}")
        if _type_name(current) != _type_name(field):
            findings.append(f"field {where} type changed: {_type_name(field)} -> "
                            f"{_type_name(current)}")
        if _label(current) != _label(field):
            findings.append(f"field {where} label changed: {_label(field)} -> {_label(current)}")
        if _oneof(new, current) != _oneof(old, field):
            findings.append(f"field {where} oneof changed: {_oneof(old, field)} -> "
                            f"{_oneof(new, current)}")
    return findings


def compare_enum(name, old, new):
    findings = []
    by_name = {v.name: v for v in new.value}
    by_number = {}
    for value in new.value:
        by_number.setdefault(value.number, []).append(value.name)
    for value in old.value:
        where = f"enum value {name}.{value.name} (= {value.number})"
        current = by_name.get(value.name)
        if current is None:
            renamed = by_number.get(value.number)
            findings.append(f"{where} renamed to {', '.join(renamed)}" if renamed
                            else f"{where} removed")
        elif current.number != value.number:
            findings.append(f"{where} renumbered to {current.number}")
    return findings


def compare_service(name, old, new):
    findings = []
    methods = {m.name: m for m in new.method}
    for method in old.method:
        where = f"method {name}.{method.name}"
        current = methods.get(method.name)
        if current is None:
            findings.append(f"{where} removed or renamed")
            continue
        for attribute in ("input_type", "output_type", "client_streaming", "server_streaming"):
            before, after = getattr(method, attribute), getattr(current, attribute)
            if before != after:
                findings.append(f"{where} {attribute} changed: {before} -> {after}")
    return findings


def breaking_changes(baseline, current):
    """Every breaking change from FileDescriptorSet baseline to current, as readable lines."""
    old_files, old_messages, old_enums, old_services = index_descriptor_set(baseline)
    new_files, new_messages, new_enums, new_services = index_descriptor_set(current)
    findings = [f"file {name} removed" for name in old_files if name not in new_files]
    for kind, old, new, compare in (("message", old_messages, new_messages, compare_message),
                                    ("enum", old_enums, new_enums, compare_enum),
                                    ("service", old_services, new_services, compare_service)):
        for name, descriptor in old.items():
            if name not in new:
                findings.append(f"{kind} {name} removed or renamed")
            else:
                findings.extend(compare(name, descriptor, new[name]))
    return findings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--protoc", default="protoc")
    parser.add_argument("--proto-root", required=True)
    parser.add_argument("--baseline", required=True, help="the committed descriptor set")
    parser.add_argument("protos", nargs="+", help=".proto files relative to --proto-root")
    args = parser.parse_args(argv)
    findings = breaking_changes(load_descriptor_set(args.baseline),
                                compile_protos(args.protoc, args.proto_root, args.protos))
    for finding in findings:
        print(f"BREAKING: {finding}")
    if findings:
        print(f"{len(findings)} breaking change(s) against {args.baseline}. A new major version "
              "gets a new package (attnscore.v2); see README.md for a deliberate release.")
        return 1
    print(f"compatible with {args.baseline}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
