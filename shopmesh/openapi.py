"""OpenAPI 3.1 for REST users, generated from the descriptor set Envoy's transcoder loads.

Paths and verbs come from each RPC's google.api.http rule; schemas from the messages, as
Envoy's grpc_json_transcoder really reads and writes them: JSON (lowerCamel) field names,
64-bit integers as strings, enums as their names, Timestamps as RFC 3339 strings, every
scalar field present in responses (print_options.always_print_primitive_fields), and
errors as google.rpc.Status JSON (convert_grpc_status) or Envoy's own plain-text replies.
Descriptions are the contract's comments. No maintained library reads google.api.http
from a descriptor set and writes OpenAPI 3.1 with Envoy's JSON conventions, so this is ours.

    python -m shopmesh.openapi gen/descriptor.binpb docs/openapi.json
"""

from __future__ import annotations

import json
import pathlib
import re
import sys
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from services.common.rules import annotation, integer_bounds

FieldDescriptor = descriptor_pb2.FieldDescriptorProto
PACKAGE_PREFIX = "shop."
# The saga's participant calls: served on Envoy's internal listener only (gateway/envoy.yaml
# answers 404 for them on the public one), so REST users never see them.
INTERNAL_METHODS = frozenset(
    {
        "shop.inventory.v1.InventoryService.ReserveStock",
        "shop.inventory.v1.InventoryService.CommitReservation",
        "shop.inventory.v1.InventoryService.ReleaseReservation",
        "shop.payment.v1.PaymentService.AuthorizePayment",
        "shop.payment.v1.PaymentService.CapturePayment",
        "shop.payment.v1.PaymentService.VoidPayment",
    }
)
PATH_PARAMETER = re.compile(r"\{([a-z_.]+)(=[^}]*)?\}")

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
for _kind in ("INT32", "SINT32", "SFIXED32", "UINT32", "FIXED32"):
    _SCALARS[getattr(FieldDescriptor, f"TYPE_{_kind}")] = {
        "type": "integer",
        "format": _kind.lower(),
    }
for _kind in ("INT64", "SINT64", "SFIXED64", "UINT64", "FIXED64"):
    # proto3 JSON: 64-bit integers are strings, so JavaScript loses no precision.
    _SCALARS[getattr(FieldDescriptor, f"TYPE_{_kind}")] = {
        "type": "string",
        "format": _kind.lower(),
        "pattern": "^-?[0-9]+$",
    }

_WELL_KNOWN: dict[str, dict[str, Any]] = {
    ".google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    ".google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"},
    ".google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
    },
}

# 32-bit integers are JSON numbers, which `minimum` and `maximum` can bound; 64-bit ones
# are strings.
_JSON_NUMBERS = {"int32", "uint32"}


def constraints(field: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
    """The JSON Schema keywords of the field's `(buf.validate.field)` rules, the ones the
    services enforce (services.common.rules), so the document says what a request must
    look like (and fuzzers send mostly valid input). A duration's bounds and `required`
    have no keyword here."""
    rules = annotation(field.options)
    if rules is None:
        return {}
    kind = rules.WhichOneof("type")
    keywords: dict[str, Any] = {}
    if kind == "string":
        for name, keyword in (("min_len", "minLength"), ("max_len", "maxLength")):
            if rules.string.HasField(name):
                keywords[keyword] = getattr(rules.string, name)
        if rules.string.HasField("pattern"):
            keywords["pattern"] = rules.string.pattern
    elif kind in _JSON_NUMBERS:
        low, high = integer_bounds(rules)
        keywords |= {"minimum": low} if low is not None else {}
        keywords |= {"maximum": high} if high is not None else {}
    elif kind == "repeated":
        for name, keyword in (("min_items", "minItems"), ("max_items", "maxItems")):
            if rules.repeated.HasField(name):
                keywords[keyword] = getattr(rules.repeated, name)
    return keywords


STATUS_SCHEMA = {
    "type": "object",
    "description": "A gRPC error as google.rpc.Status JSON: the code, a message, and typed "
    "details such as google.rpc.ErrorInfo (a stable `reason`) and google.rpc.BadRequest.",
    "properties": {
        "code": {"type": "integer", "format": "int32"},
        "message": {"type": "string"},
        "details": {"type": "array", "items": _WELL_KNOWN[".google.protobuf.Any"]},
    },
}


class Descriptors:
    """The messages, enums and comments of a descriptor set, by full name."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.files = list(files.file)
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.comments: dict[str, str] = {}
        for file in self.files:
            self._index(file)

    def _index(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        locations = {
            tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location
        }

        def comment(*path: int) -> str:
            return " ".join(locations.get(path, "").split())

        for m, message in enumerate(file.message_type):
            name = f".{file.package}.{message.name}"
            self.messages[name] = message
            self.comments[name] = comment(4, m)
            for f, field in enumerate(message.field):
                self.comments[f"{name}.{field.name}"] = comment(4, m, 2, f)
        for e, enum in enumerate(file.enum_type):
            self.enums[f".{file.package}.{enum.name}"] = enum
            self.comments[f".{file.package}.{enum.name}"] = comment(5, e)
        for s, service in enumerate(file.service):
            for r, method in enumerate(service.method):
                self.comments[f".{file.package}.{service.name}.{method.name}"] = comment(6, s, 2, r)


def _schema_name(full_name: str) -> str:
    return full_name.lstrip(".").removeprefix(PACKAGE_PREFIX).replace(".", "_")


class Builder:
    def __init__(self, descriptors: Descriptors) -> None:
        self.d = descriptors
        self.schemas: dict[str, Any] = {"google_rpc_Status": STATUS_SCHEMA}

    def field_schema(
        self, field: descriptor_pb2.FieldDescriptorProto, owner: str
    ) -> dict[str, Any]:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            item = _WELL_KNOWN.get(field.type_name) or {"$ref": self.ref(field.type_name)}
        elif field.type == FieldDescriptor.TYPE_ENUM:
            item = {"$ref": self.ref(field.type_name)}
        else:
            item = dict(_SCALARS[field.type])
        rules = constraints(field)
        if field.label == FieldDescriptor.LABEL_REPEATED:
            schema = {"type": "array", "items": item, **rules}
        else:
            schema = {**item, **rules} if "$ref" not in item else item
        description = self.d.comments.get(f"{owner}.{field.name}")
        if description:
            schema = (
                {**schema, "description": description}
                if "$ref" not in schema
                else {
                    "allOf": [schema],
                    "description": description,
                }
            )
        return schema

    def ref(self, full_name: str, skip: frozenset[str] = frozenset()) -> str:
        """A $ref to the schema of a message or enum, building it (minus `skip` fields)."""
        name = _schema_name(full_name) + ("_Body" if skip else "")
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: recursive messages refer to it
            if full_name in self.d.enums:
                values = [v.name for v in self.d.enums[full_name].value]
                self.schemas[name] = {"type": "string", "enum": values}
            else:
                message = self.d.messages[full_name]
                self.schemas[name] = {
                    "type": "object",
                    "properties": {
                        f.json_name: self.field_schema(f, full_name)
                        for f in message.field
                        if f.name not in skip
                    },
                    "additionalProperties": False,
                }
            if self.d.comments.get(full_name):
                self.schemas[name]["description"] = self.d.comments[full_name]
        return f"#/components/schemas/{name}"

    def operation(
        self,
        package: str,
        service: descriptor_pb2.ServiceDescriptorProto,
        method: descriptor_pb2.MethodDescriptorProto,
    ) -> tuple[str, str, dict[str, Any]] | None:
        rule = method.options.Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        if verb is None or verb == "custom":
            return None
        path = getattr(rule, verb)
        request = self.d.messages[method.input_type]
        fields = {f.name: f for f in request.field}
        in_path = [m.group(1) for m in PATH_PARAMETER.finditer(path)]
        parameters = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": self.field_schema(fields[name], method.input_type),
            }
            for name in in_path
        ]
        operation: dict[str, Any] = {
            "operationId": f"{service.name}_{method.name}",
            "tags": [service.name],
            "summary": method.name,
            "description": self.d.comments.get(f".{package}.{service.name}.{method.name}", ""),
        }
        if rule.body == "*":
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": self.ref(method.input_type, frozenset(in_path))}
                    }
                },
            }
        elif not rule.body:
            # Without a body, the other fields are query parameters, by their proto names.
            parameters += [
                {
                    "name": f.name,
                    "in": "query",
                    "required": False,
                    "schema": self.field_schema(f, method.input_type),
                }
                for f in request.field
                if f.name not in in_path and f.type != FieldDescriptor.TYPE_MESSAGE
            ]
        if parameters:
            operation["parameters"] = parameters
        error = {
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/google_rpc_Status"}},
                "text/plain": {"schema": {"type": "string"}},
            }
        }
        operation["responses"] = {
            "200": {
                "description": "OK",
                "content": {"application/json": {"schema": {"$ref": self.ref(method.output_type)}}},
            },
            "400": {
                "description": "INVALID_ARGUMENT or FAILED_PRECONDITION; the reason says which",
                **error,
            },
            "401": {"description": "No valid token (Envoy's reply is plain text)", **error},
            "403": {"description": "PERMISSION_DENIED, or a token for another audience", **error},
            "404": {"description": "NOT_FOUND", **error},
            "409": {"description": "ALREADY_EXISTS or ABORTED", **error},
            "413": {"description": "The body is over the gateway's limit", **error},
            "429": {
                "description": "RESOURCE_EXHAUSTED: over one of the gateway's rate limits",
                "headers": {
                    "retry-after": {
                        "description": "Seconds until the bucket refills",
                        "schema": {"type": "integer", "minimum": 1},
                    }
                },
                **error,
            },
            "503": {
                "description": "UNAVAILABLE: retry later (circuit breaker or no instance)",
                **error,
            },
            "default": {"description": "Another gRPC status, as JSON", **error},
        }
        return PATH_PARAMETER.sub(r"{\1}", path), verb, operation


def build(descriptor_set: bytes) -> dict[str, Any]:
    descriptors = Descriptors(descriptor_pb2.FileDescriptorSet.FromString(descriptor_set))
    builder = Builder(descriptors)
    paths: dict[str, dict[str, Any]] = {}
    for file in sorted(descriptors.files, key=lambda f: f.name):
        if not file.package.startswith(PACKAGE_PREFIX):
            continue
        for service in file.service:
            for method in service.method:
                if f"{file.package}.{service.name}.{method.name}" in INTERNAL_METHODS:
                    continue
                built = builder.operation(file.package, service, method)
                if built is not None:
                    path, verb, operation = built
                    paths.setdefault(path, {})[verb] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "shopmesh REST API",
            "version": "v1",
            "description": "REST/JSON as served by the Envoy gateway, transcoded to the gRPC "
            "services. Generated from gen/descriptor.binpb by shopmesh.openapi; do not edit.",
        },
        "servers": [{"url": "http://localhost:8080"}],
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(builder.schemas.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    document = build(pathlib.Path(argv[1]).read_bytes())
    output = pathlib.Path(argv[2])
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
