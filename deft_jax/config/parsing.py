"""Typed dataclass sections from nested dicts (TOML/JSON tables, `--set key=value`).

The dataclasses' annotations are the schema: `int`, `float`, `bool`, `str`, `list`,
`dict` (a free-form table), `X | None`, `Literal["a", "b"]` (a string with fixed choices),
nested dataclasses (sections) and tagged unions (`A | B | ...` of dataclasses that each
have a one-choice `Literal` field `kind`: the table's `kind` says which one it is). Nothing
here knows DEFT's keys; `deft_jax.config.schema` holds them. Every mistake is a one-line
`UserError`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints

from deft_jax.errors import UserError


def field_types(cls) -> dict[str, Any]:
    """name -> resolved annotation of each field of dataclass `cls`."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def choices_of(typ: Any) -> tuple[str, ...] | None:
    """The allowed values of a `Literal[...]` annotation; None for any other type."""
    return get_args(typ) if get_origin(typ) is Literal else None


def one_of(values) -> str:
    """'a', 'a or b', 'a, b or c'."""
    values = [str(v) for v in values]
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"


def optional_type(typ: Any) -> Any | None:
    """X for an `X | None` (or `Optional[X]`) annotation, else None."""
    if get_origin(typ) not in (typing.Union, types.UnionType):
        return None
    args = get_args(typ)
    rest = [a for a in args if a is not type(None)]
    return rest[0] if type(None) in args and len(rest) == 1 else None


TAG = "kind"  # the field of a tagged union's members that says which member a table is


def tagged_members(typ: Any) -> dict[str, type] | None:
    """tag -> dataclass for a tagged union annotation (a union of dataclasses, each with a
    one-choice `Literal` field `kind`); None for any other type."""
    if get_origin(typ) not in (typing.Union, types.UnionType):
        return None
    members = {}
    for cls in get_args(typ):
        tag = choices_of(field_types(cls).get(TAG)) if dataclasses.is_dataclass(cls) else None
        if tag is None or len(tag) != 1:
            return None
        members[tag[0]] = cls
    return members


def coerce(value: Any, typ: Any, where: str) -> Any:
    """`value` checked against annotation `typ` (ints are accepted as floats). A Literal's
    membership is checked by `check_choices`, after the whole config is built."""
    inner = optional_type(typ)
    if inner is not None:
        return None if value is None else coerce(value, inner, where)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config {where} must be a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond every float (JSON and TOML allow it)
            number = math.inf
        if not math.isfinite(number):
            got = repr(value) if isinstance(value, float) else "an integer beyond any float"
            raise UserError(f"config {where} must be a finite number, got {got}")
        return number
    if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UserError(f"config {where} must be an integer, got {value!r}")
    if typ is bool and not isinstance(value, bool):
        raise UserError(f"config {where} must be true or false, got {value!r}")
    if (typ is str or choices_of(typ) is not None) and not isinstance(value, str):
        raise UserError(f"config {where} must be a string, got {value!r}")
    if typ is dict and not isinstance(value, dict):
        raise UserError(f"config {where} must be a table, got {value!r}")
    if typ is list and not isinstance(value, list):
        raise UserError(f"config {where} must be a list, got {value!r}")
    return value


def from_dict(cls, raw: dict, where: str = "", aliases: dict | None = None):
    """An instance of dataclass `cls` from a nested dict; keys left out keep their defaults.
    `aliases`: {dataclass: {old key: key}} (setting both to different values is an error)."""
    for old, new in (aliases or {}).get(cls, {}).items():
        if old in raw:
            raw = dict(raw)
            value = raw.pop(old)
            if new in raw and raw[new] != value and raw[new] != getattr(cls(), new):
                raise UserError(f"config {where}.{old} is an alias of {where}.{new}: set one of them")
            raw[new] = value
    types_ = field_types(cls)
    unknown = set(raw) - set(types_)
    if unknown:
        prefix = f"{where}." if where else ""
        raise UserError(f"unknown config key {prefix}{sorted(unknown)[0]} "
                        f"(known: {', '.join(sorted(types_))})")
    kwargs = {}
    for name, value in raw.items():
        typ = types_[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise UserError(f"config {key} must be a table")
            kwargs[name] = from_dict(typ, value, key, aliases)
        elif (members := tagged_members(typ)) is not None:
            kwargs[name] = from_tagged_dict(members, value, key, aliases)
        else:
            kwargs[name] = coerce(value, typ, key)
    return cls(**kwargs)


def from_tagged_dict(members: dict[str, type], raw: Any, where: str, aliases: dict | None = None):
    """The member of a tagged union that `raw`'s `kind` names, from `raw` (its other keys
    start from that member's defaults); a key that member lacks is an error naming its keys."""
    if not isinstance(raw, dict):
        raise UserError(f"config {where} must be a table, got {raw!r}")
    tag = raw.get(TAG)
    if TAG not in raw:
        raise UserError(f"config {where}.{TAG} must be set ({one_of(members)})")
    if not isinstance(tag, str) or tag not in members:
        raise UserError(f"config {where}.{TAG} must be {one_of(members)}, got {tag!r}")
    cls = members[tag]
    keys = [name for name in field_types(cls) if name != TAG]
    unknown = [name for name in raw if name not in field_types(cls)]
    if unknown:
        raise UserError(f"unknown config key{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(f'{where}.{name}' for name in unknown)} for {where}.{TAG} = "
                        f"{tag!r} ({tag} keys: {', '.join(keys) if keys else 'none'}; "
                        f"{where}.{TAG} chooses another: {one_of(members)})")
    return from_dict(cls, raw, where, aliases)


def check_choices(obj, where: str = "") -> None:
    """Every Literal-typed field of dataclass instance `obj` (and its sections) holds one of
    its choices; else one line naming them."""
    for name, typ in field_types(type(obj)).items():
        key = f"{where}.{name}" if where else name
        value = getattr(obj, name)
        if dataclasses.is_dataclass(typ) or tagged_members(typ) is not None:
            check_choices(value, key)
        elif (allowed := choices_of(typ)) is not None and value not in allowed:
            raise UserError(f"invalid config: {key} must be {one_of(allowed)}, got {value!r}")


def merge(base: dict, update: dict, cls) -> dict:
    """`update`'s values over `base`'s, for dataclass `cls`: sections (dataclass-typed
    fields) merge key by key; every other value is replaced whole, free-form tables
    (`dict` fields) and tagged unions (data.source: a table starts from its kind's
    defaults) included."""
    types_ = field_types(cls)
    out = dict(base)
    for key, value in update.items():
        typ = types_.get(key)
        if dataclasses.is_dataclass(typ) and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, typ)
        else:
            out[key] = value
    return out


def parse_value(text: str) -> Any:
    """JSON; else a TOML inline table or array (`{kind="folder", path="x"}`); else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    except ValueError as err:  # an integer of more digits than Python converts
        raise UserError(f"cannot read value {text[:20]}...: {str(err).split(';')[0]}") from None
    if text.strip()[:1] in ("{", "["):
        try:
            return tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            pass
    return text


def field_type_in(typ: Any, node: dict, name: str) -> Any:
    """The annotation of key `name` of table `node` whose annotation is `typ` (a dataclass,
    or a tagged union: the member `node`'s kind names); None when unknown."""
    members = tagged_members(typ)
    if members is not None:
        typ = members.get(node.get(TAG))
    return field_types(typ).get(name) if dataclasses.is_dataclass(typ) else None


def set_values(raw: dict, overrides: list[str], cls=None, expand=None) -> dict:
    """`a.b.c=value` (value parsed as JSON, else taken as a string) into nested dict `raw`
    of dataclass `cls`, in order; `expand(key parts, value)` may rewrite a value (a
    shorthand) before it is set. Setting a tagged union's `kind` to another kind drops
    the old kind's keys: the table starts from the new kind's defaults, plus the keys of
    it set earlier in `overrides` (so `path=x kind=folder` means the same as
    `kind=folder path=x`)."""
    written = set()  # the dotted keys set so far
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node, typ = raw, cls
        for part in parts[:-1]:
            typ = field_type_in(typ, node, part)
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: {part} is not a table")
        value = parse_value(text)
        value = expand(parts, value) if expand is not None else value
        if parts[-1] == TAG and tagged_members(typ) is not None and node.get(TAG) != value:
            kept = {name: v for name, v in node.items() if (*parts[:-1], name) in written}
            node.clear()
            node.update(kept)
        node[parts[-1]] = value
        written.add(tuple(parts))
    return raw


def describe_keys(cls, where: str = "") -> list[str]:
    """One entry per leaf key of dataclass `cls`: `key (a|b|c, default a)` for choices,
    `key (default)` for scalars, `key (table)` / `key (list)` otherwise (for help texts);
    a tagged union: `key.kind (a|b, default a with k=v)` (the default's values that differ
    from its kind's defaults), then one entry per kind, `key with kind=a: its keys
    (their kind's defaults), ...`."""
    out, defaults = [], cls()
    for name, typ in field_types(cls).items():
        key = f"{where}.{name}" if where else name
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(typ):
            out += describe_keys(typ, key)
        elif (members := tagged_members(typ)) is not None:
            changed = [f"{f.name}={json.dumps(getattr(default, f.name))}" for f in dataclasses.fields(default)
                       if getattr(default, f.name) != getattr(type(default)(), f.name)]
            out.append(f"{key}.{TAG} ({'|'.join(members)}, default {getattr(default, TAG)}"
                       f"{' with ' + ', '.join(changed) if changed else ''})")
            for tag, member in members.items():
                keys = [entry.removeprefix(f"{key}.") for entry in describe_keys(member, key)
                        if not entry.startswith(f"{key}.{TAG} ")]
                out.append(f"{key} with {TAG}={tag}: {', '.join(keys)}")
        elif (allowed := choices_of(typ)) is not None:
            out.append(f"{key} ({'|'.join(allowed)}, default {default})")
        elif isinstance(default, dict):
            out.append(f"{key} (table)")
        elif isinstance(default, list):
            out.append(f"{key} (list{', default ' + json.dumps(default) if default else ''})")
        else:
            out.append(f"{key} ({json.dumps(default)})")
    return out
