"""Checks Envoy bootstrap files against Envoy's own v3 API definitions.

Every file is parsed into `envoy.config.bootstrap.v3.Bootstrap` (the compiled protos come from
the `xds-protos` package): an unknown field, a wrong type, an unknown enum value or an `@type`
that names no Envoy message fails, with the file and the message protobuf gives. Envoy's further
semantic checks (protoc-gen-validate rules) are not run.

Envoy loads YAML as YAML -> JSON -> proto (`MessageUtil::loadFromYaml`), and its JSON parser is
protobuf C++'s `JsonStringToMessage`, which always runs in its legacy mode
(`allow_legacy_syntax`), with `case_insensitive_enum_parsing` set by Envoy. That mode reads more
than the proto3 JSON mapping, and more than Python's `json_format`, which is strict; so before
parsing, `envoy_forms` rewrites the document, guided by the message descriptors, into the form
`json_format` takes, wherever C++ would read the original:

- a single value for a repeated field is a one-element list (the proxy-wasm SDK examples write
  `listeners:` holding one mapping), and a list nested in a repeated field's list is spliced in;
- a `google.protobuf.Duration` written `{seconds, nanos}` becomes its string; a string is held
  to the C++ grammar, stricter than Python's (which also takes `+1s`, ` 1s`, `1.s`, `1_0s` and
  more than nine decimals);
- enum names match in any letter case, and a number in a string names an enum value;
- a bool field takes the strings C++ reads as bools (`"true"`, `"yes"`, `"1"`, ... any case);
- a wrapper (`UInt32Value`, `BoolValue`, ...) also takes its message form, `{value: ...}`;
- the contents of a `TypedStruct` are parsed too, as the message its `type_url` names (Envoy
  converts them with the same parser when it builds the extension).

Field names in either spelling (`stat_prefix`, `statPrefix`) `json_format` reads by itself. So
what passes here is what Envoy's parser accepts.

Usage: python envoy_schema.py FILE...   (exit 0: all valid; 1: at least one is not)
"""

import importlib
import pkgutil
import re
import sys

import yaml
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor

TYPE_PREFIX = "type.googleapis.com/"
WRAPPERS = {
    f"google.protobuf.{name}"
    for name in (
        "DoubleValue", "FloatValue", "Int64Value", "UInt64Value", "Int32Value", "UInt32Value",
        "BoolValue", "StringValue", "BytesValue",
    )
}
DURATION = "google.protobuf.Duration"
# Parsed as JSON values, not as fields: nothing to rewrite inside.
OPAQUE = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
# Types whose JSON inside an `Any` sits under "value".
SPECIAL_IN_ANY = WRAPPERS | OPAQUE | {
    DURATION, "google.protobuf.Timestamp", "google.protobuf.FieldMask", "google.protobuf.Any",
}
TYPED_STRUCTS = {"udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"}
# protobuf C++'s duration string: integer seconds, up to nine decimals, one `s`.
DURATION_TEXT = re.compile(r"-?[0-9]+(\.[0-9]{1,9})?s")
MAX_DURATION_SECONDS = 315_576_000_000
# What absl::SimpleAtob, which the C++ parser uses for a quoted bool, reads (any case).
TRUE_WORDS = {"true", "t", "yes", "y", "1"}
FALSE_WORDS = {"false", "f", "no", "n", "0"}
INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")


def import_package_of(type_url):
    """Imports every `_pb2` module of the message's proto package, so its descriptor is in the
    pool. Unknown packages are left to the parser, which reports the type as unknown."""
    full_name = type_url[len(TYPE_PREFIX):] if type_url.startswith(TYPE_PREFIX) else type_url
    package = full_name.rsplit(".", 1)[0]
    try:
        module = importlib.import_module(package)
    except ImportError:
        return
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")


def message_type(type_url):
    """The descriptor of the message `type_url` names, or None."""
    if not isinstance(type_url, str):
        return None
    import_package_of(type_url)
    try:
        return descriptor_pool.Default().FindMessageTypeByName(type_url.rsplit("/", 1)[-1])
    except KeyError:
        return None


def field_named(descriptor, key):
    """The field `key` names in C++'s lookup: its camelCase name, proto name or JSON name."""
    field = descriptor.fields_by_camelcase_name.get(key) or descriptor.fields_by_name.get(key)
    return field or next((f for f in descriptor.fields if f.json_name == key), None)


def child(path, key):
    return f"{path}.{key}" if path else key


def proto_int(value):
    """An integer as the C++ parser reads one: a JSON integer, a number without a fraction
    (within 2^53), or a string of digits; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, str) and INTEGER_TEXT.fullmatch(value):
        return int(value)
    return None


def duration(value, path, problems):
    """A duration in the string form `json_format` takes, where C++ reads `value` as one."""
    if isinstance(value, str):
        if not DURATION_TEXT.fullmatch(value):
            problems.append(
                f"{path}: {value!r} is not a duration Envoy reads "
                '(integer seconds, up to nine decimals, then "s")'
            )
        elif abs(int(value.split(".")[0].rstrip("s"))) > MAX_DURATION_SECONDS:
            problems.append(f"{path}: {value!r} is beyond a Duration's range")
        return value
    if not isinstance(value, dict):
        return value
    for key in value:
        if key not in ("seconds", "nanos"):
            problems.append(f"{path}: google.protobuf.Duration has no field named {key!r}")
    seconds, nanos = proto_int(value.get("seconds", 0)), proto_int(value.get("nanos", 0))
    if seconds is None or nanos is None or not -(2**63) <= seconds < 2**63 or not -(2**31) <= nanos < 2**31:
        problems.append(f"{path}: seconds must be an int64 and nanos an int32: {value!r}")
        return value
    if abs(nanos) > 999_999_999 or (seconds > 0 > nanos) or (seconds < 0 < nanos):
        # The C++ parser stores it; Envoy refuses it when it reads the duration.
        problems.append(f"{path}: {value!r} is not a valid duration (Envoy: \"Duration out-of-range\")")
        return value
    total = seconds * 1_000_000_000 + nanos
    whole, fraction = divmod(abs(total), 1_000_000_000)
    sign = "-" if total < 0 else ""
    return f"{sign}{whole}.{fraction:09d}s" if fraction else f"{sign}{whole}s"


def enum_value(value, enum):
    """The enum value C++ reads `value` as: a name in any case, or a number in a string."""
    if not isinstance(value, str) or enum.full_name == "google.protobuf.NullValue":
        return value
    if value in enum.values_by_name:
        return value
    for name in enum.values_by_name:
        if name.lower() == value.lower():
            return name
    stripped = value.strip()
    return int(stripped) if INTEGER_TEXT.fullmatch(stripped) else value


def single(value, field, path, problems):
    """One value of `field` (one element, for a repeated field)."""
    if value is None:
        return value
    if field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        return envoy_forms(value, field.message_type, path, problems)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return enum_value(value, field.enum_type)
    if field.type == FieldDescriptor.TYPE_BOOL and isinstance(value, str):
        word = value.lower()
        return True if word in TRUE_WORDS else False if word in FALSE_WORDS else value
    return value


def spliced(items, field):
    """A repeated field's list with nested lists spliced in (not for Value and ListValue
    elements, whose lists are values)."""
    if field.message_type is not None and field.message_type.full_name in OPAQUE:
        return items
    out = []
    for item in items:
        out.extend(spliced(item, field) if isinstance(item, list) else [item])
    return out


def field_value(value, field, path, problems):
    """The value of `field` in the form `json_format` takes."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if not isinstance(value, dict):
            return value
        value_field = field.message_type.fields_by_name["value"]
        return {k: single(v, value_field, child(path, k), problems) for k, v in value.items()}
    if field.is_repeated:
        if not isinstance(value, list):
            # C++'s legacy mode: "a single element in place of an array thereof".
            return [single(value, field, path, problems)]
        return [single(v, field, f"{path}[{i}]", problems) for i, v in enumerate(spliced(value, field))]
    return single(value, field, path, problems)


def check_typed_struct(typed_struct, path, problems):
    """Parses a TypedStruct's `value` as the message its `type_url` names."""
    url = typed_struct.get("type_url", typed_struct.get("typeUrl"))
    inner = message_type(url)
    if inner is None:
        problems.append(f"{path}: the TypedStruct's type_url {url!r} names no Envoy message")
        return
    content = typed_struct.get("value")
    if content is None:
        return
    try:
        json_format.ParseDict(
            envoy_forms(content, inner, child(path, "value"), problems),
            message_factory.GetMessageClass(inner)(),
            ignore_unknown_fields=False,
        )
    except json_format.ParseError as error:
        problems.append(f"{child(path, 'value')}: {first_line(error)}")


def envoy_forms(value, descriptor, path, problems):
    """`value`, read from YAML for a message of type `descriptor`, in the form `json_format`
    takes, wherever Envoy's parser reads it; what Envoy's parser refuses but `json_format`
    would take is added to `problems`. Anything else that does not fit is left for
    `json_format` to report."""
    name = descriptor.full_name
    if name in OPAQUE:
        return value
    if name == DURATION:
        return duration(value, path, problems)
    if name in WRAPPERS:
        if isinstance(value, dict) and list(value) == ["value"]:
            value = value["value"]
        return single(value, descriptor.fields_by_name["value"], path, problems)
    if not isinstance(value, dict):
        return value
    if name == "google.protobuf.Any":
        inner = message_type(value.get("@type"))
        if inner is None:
            return value
        if inner.full_name in SPECIAL_IN_ANY:
            if "value" not in value:
                return value
            return {**value, "value": envoy_forms(value["value"], inner, child(path, "value"), problems)}
        rest = {k: v for k, v in value.items() if k != "@type"}
        return {"@type": value["@type"], **envoy_forms(rest, inner, path, problems)}
    out = {}
    for key, item in value.items():
        field = field_named(descriptor, key) if isinstance(key, str) else None
        out[key] = item if field is None else field_value(item, field, child(path, key), problems)
    if name in TYPED_STRUCTS:
        check_typed_struct(out, path, problems)
    return out


def first_line(error):
    # protobuf appends every field the message has; the first line says what is wrong.
    return str(error).split("\n Available Fields")[0]


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
    problems = []
    document = envoy_forms(document, bootstrap_pb2.Bootstrap.DESCRIPTOR, "", problems)
    try:
        json_format.ParseDict(document, bootstrap_pb2.Bootstrap(), ignore_unknown_fields=False)
    except json_format.ParseError as error:
        problems.append(first_line(error))
    return problems


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
