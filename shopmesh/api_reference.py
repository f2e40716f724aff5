"""docs/api-reference.md, the API reference, generated from the descriptor set Envoy's
transcoder loads.

For every method of the contracts: its gRPC name, its REST route (the google.api.http
rule: verb, path, and where the other fields go), who may call it and how it fails (as its
comment names them: an admin-scope reason means the shop.admin scope, and each gRPC code
with the reasons listed after it), and its request and response fields with their types
and comments; then every message and enum those fields use. The comments are the
contract's own, so the page says what the protos say.

    python -m shopmesh.api_reference gen/descriptor.binpb docs/api-reference.md
"""

from __future__ import annotations

import pathlib
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from shopmesh.openapi import INTERNAL_METHODS, PATH_PARAMETER

FieldProto = descriptor_pb2.FieldDescriptorProto
PACKAGE_PREFIX = "shop."
ADMIN_SCOPE = "shop.admin"
ADMIN_REASON = "ADMIN_SCOPE_REQUIRED"

# gRPC codes as the gateway's transcoder answers them over REST (google.rpc.Code's mapping).
HTTP_STATUS = {
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
UPPER_WORD = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*\b")

_SCALAR_NAMES = {
    number: name.removeprefix("TYPE_").lower()
    for name, number in FieldProto.Type.items()
    if name not in ("TYPE_MESSAGE", "TYPE_ENUM", "TYPE_GROUP")
}
_JSON_FORMS = {
    ".google.protobuf.Timestamp": "an RFC 3339 string in JSON",
    ".google.protobuf.Duration": 'seconds as a string such as "900s" in JSON',
}

INTRO = """\
# API reference

<!-- Generated from gen/descriptor.binpb by `python -m shopmesh.api_reference` (make gen):
do not edit; change the comments in proto/ instead. -->

Every method of the three services, from the contracts in `proto/` and their comments.
A call through the gateway needs a token (`Authorization: Bearer ...`); the services act
as the token's subject, so "the caller" below is that user. The errors listed are the
ones each method's comment names; any call can also fail as [the error
model](api.md#error-model) says (UNAUTHENTICATED, a rate limit, UNAVAILABLE). Field names are
the proto names; REST/JSON also takes, and answers with, their lowerCamel form
(`request_id` is `requestId`), 64-bit integers are strings, and enums are their names.
"""


@dataclass
class Service:
    name: str  # full name, e.g. shop.order.v1.OrderService
    comment: str
    methods: list[descriptor_pb2.MethodDescriptorProto] = field(default_factory=list)


class Contracts:
    """The services, messages, enums and comments of a descriptor set, by full name."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.services: list[Service] = []
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.comments: dict[str, str] = {}
        for file in sorted(files.file, key=lambda f: f.name):
            self._index(file)

    def _index(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        locations = {
            tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location
        }

        def comment(*path: int) -> str:
            return " ".join(locations.get(path, "").split())

        package = f".{file.package}"

        def add_message(
            prefix: str, message: descriptor_pb2.DescriptorProto, path: tuple[int, ...]
        ) -> None:
            name = f"{prefix}.{message.name}"
            self.messages[name] = message
            self.comments[name] = comment(*path)
            for f, item in enumerate(message.field):
                self.comments[f"{name}.{item.name}"] = comment(*path, 2, f)
            for n, nested in enumerate(message.nested_type):
                add_message(name, nested, (*path, 3, n))
            for e, enum in enumerate(message.enum_type):
                add_enum(name, enum, (*path, 4, e))

        def add_enum(
            prefix: str, enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...]
        ) -> None:
            name = f"{prefix}.{enum.name}"
            self.enums[name] = enum
            self.comments[name] = comment(*path)
            for v, value in enumerate(enum.value):
                self.comments[f"{name}.{value.name}"] = comment(*path, 2, v)

        for m, message in enumerate(file.message_type):
            add_message(package, message, (4, m))
        for e, enum in enumerate(file.enum_type):
            add_enum(package, enum, (5, e))
        if not file.package.startswith(PACKAGE_PREFIX):
            return
        for s, service in enumerate(file.service):
            full = f"{file.package}.{service.name}"
            self.services.append(Service(full, comment(6, s), list(service.method)))
            for r, method in enumerate(service.method):
                self.comments[f"{full}.{method.name}"] = comment(6, s, 2, r)


def _anchor(full_name: str) -> str:
    """GitHub's anchor for a heading that is `full_name` in backquotes."""
    return re.sub(r"[^a-z0-9_-]", "", full_name.lstrip(".").lower())


def _type(item: FieldProto) -> str:
    if item.type in (FieldProto.TYPE_MESSAGE, FieldProto.TYPE_ENUM):
        name = item.type_name.lstrip(".")
        text = (
            f"[`{name.rsplit('.', 1)[-1]}`](#{_anchor(name)})"
            if name.startswith(PACKAGE_PREFIX)
            else f"`{name}`"
        )
        if item.type_name in _JSON_FORMS:
            text += f" ({_JSON_FORMS[item.type_name]})"
    else:
        text = f"`{_SCALAR_NAMES[item.type]}`"
    if item.label == FieldProto.LABEL_REPEATED:
        text = f"repeated {text}"
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|") or " "


def route(
    method: descriptor_pb2.MethodDescriptorProto, request: descriptor_pb2.DescriptorProto
) -> str:
    """The REST route of the method's google.api.http rule, and where the fields go."""
    rule = method.options.Extensions[annotations_pb2.http]
    verb = rule.WhichOneof("pattern")
    if verb is None or verb == "custom":
        return "none"
    path = getattr(rule, verb)
    in_path = [m.group(1) for m in PATH_PARAMETER.finditer(path)]
    template = PATH_PARAMETER.sub(r"{\1}", path)  # {name=...} shown as {name}
    text = f"`{verb.upper()} {template}`"
    rest = [f.name for f in request.field if f.name not in in_path]
    if rule.body == "*":
        if rest:
            text += (
                ", the other fields as the JSON body"
                if in_path
                else ", the request as the JSON body"
            )
        else:
            text += ", body `{}`"
    elif rule.body:
        text += f", `{rule.body}` as the JSON body"
    elif rest:
        text += ", query: " + ", ".join(f"`{name}`" for name in rest)
    return text


def errors(comment: str) -> list[tuple[str, list[str]]]:
    """(gRPC code, [reasons]) as the comment names them, from its first "Returns" on: each
    code with the UPPER_SNAKE reasons that follow it before the next code."""
    _, found, named = comment.partition("Returns ")
    listed: list[tuple[str, list[str]]] = []
    # A code may be one word (ABORTED); a reason always has an underscore.
    for word in UPPER_WORD.findall(named if found else ""):
        if word in HTTP_STATUS:
            listed.append((word, []))
        elif "_" in word and listed and word not in listed[-1][1]:
            listed[-1][1].append(word)
    return listed


def caller(full_method: str, comment: str) -> str:
    if full_method in INTERNAL_METHODS:
        return (
            "internal: the order service's saga, through Envoy's internal listener; the"
            " public listener answers it as unknown (gRPC UNIMPLEMENTED, REST 404)"
        )
    if ADMIN_REASON in comment or ADMIN_SCOPE in comment:
        return f"a token with the `{ADMIN_SCOPE}` scope"
    return "any token"


def _fields(contracts: Contracts, full_name: str) -> Iterator[str]:
    message = contracts.messages[full_name]
    if not message.field:
        yield "No fields."
        return
    yield "| field | type | |"
    yield "|---|---|---|"
    for item in message.field:
        note = contracts.comments.get(f"{full_name}.{item.name}", "")
        yield f"| `{item.name}` | {_type(item)} | {_cell(note)} |"


def _method(
    contracts: Contracts, service: Service, method: descriptor_pb2.MethodDescriptorProto
) -> Iterator[str]:
    full = f"{service.name}.{method.name}"
    comment = contracts.comments.get(full, "")
    request = contracts.messages[method.input_type]
    yield f"### {method.name}"
    yield ""
    yield comment
    yield ""
    yield "| | |"
    yield "|---|---|"
    yield f"| gRPC | `{service.name}/{method.name}` |"
    yield f"| REST | {route(method, request)} |"
    yield f"| caller | {caller(full, comment)} |"
    named = errors(comment)
    listed = "; ".join(
        f"`{code}` (HTTP {HTTP_STATUS[code]})"
        + (": " + ", ".join(f"`{r}`" for r in reasons) if reasons else "")
        for code, reasons in named
    )
    yield f"| errors | {listed or 'none named'} |"
    for title, name in (("Request", method.input_type), ("Response", method.output_type)):
        yield ""
        yield f"{title} `{name.lstrip('.').rsplit('.', 1)[-1]}`:"
        yield ""
        yield from _fields(contracts, name)
    yield ""


def _fields_of(contracts: Contracts, name: str) -> list[FieldProto]:
    return list(contracts.messages[name].field) if name in contracts.messages else []


def _used_types(contracts: Contracts) -> list[str]:
    """Every shop.* message and enum the fields of a request or response reach, in the
    order first met (the requests and responses themselves are shown with their method)."""
    seen: dict[str, None] = {}

    def visit(name: str) -> None:
        if name in seen or not name.lstrip(".").startswith(PACKAGE_PREFIX):
            return
        seen[name] = None
        for item in _fields_of(contracts, name):
            if item.type in (FieldProto.TYPE_MESSAGE, FieldProto.TYPE_ENUM):
                visit(item.type_name)

    for service in contracts.services:
        for method in service.methods:
            for name in (method.input_type, method.output_type):
                for item in _fields_of(contracts, name):
                    if item.type in (FieldProto.TYPE_MESSAGE, FieldProto.TYPE_ENUM):
                        visit(item.type_name)
    return list(seen)


def _type_section(contracts: Contracts, name: str) -> Iterator[str]:
    yield f"### `{name.lstrip('.')}`"
    yield ""
    if contracts.comments.get(name):
        yield contracts.comments[name]
        yield ""
    if name in contracts.enums:
        yield "| value | number | |"
        yield "|---|---|---|"
        for value in contracts.enums[name].value:
            note = contracts.comments.get(f"{name}.{value.name}", "")
            yield f"| `{value.name}` | {value.number} | {_cell(note)} |"
    else:
        yield from _fields(contracts, name)
    yield ""


def render(descriptor_set: bytes) -> str:
    contracts = Contracts(descriptor_pb2.FileDescriptorSet.FromString(descriptor_set))
    lines = [INTRO]
    for service in contracts.services:
        methods = ", ".join(f"[{m.name}](#{m.name.lower()})" for m in service.methods)
        lines.append(f"- `{service.name}`: {methods}")
    lines.append("- [Messages and enums](#messages-and-enums)")
    lines.append("")
    for service in contracts.services:
        lines += [f"## `{service.name}`", "", service.comment, ""]
        for method in service.methods:
            lines += _method(contracts, service, method)
    lines += ["## Messages and enums", ""]
    for name in _used_types(contracts):
        lines += _type_section(contracts, name)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    output = pathlib.Path(argv[2])
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(pathlib.Path(argv[1]).read_bytes()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
