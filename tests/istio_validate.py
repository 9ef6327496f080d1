#!/usr/bin/env python3
"""Strict offline validation of Kubernetes manifests against Istio's CRD bundle.

    python -m tests.istio_validate [--crds crd-all.gen.yaml] istio/*.yaml

For every YAML document it finds the CustomResourceDefinition of the document's
`apiVersion` (group/version) and `kind`, takes that version's `openAPIV3Schema` and
validates the whole object the way `kubectl apply --validate=strict` and the API server
would, with nothing but PyYAML:

- `apiVersion`, `kind` and `metadata` (a closed subset of ObjectMeta: name, namespace,
  labels, annotations, ...; label and annotation values must be strings) at the top, then
  the schema's own properties (`spec`, `status`);
- every object schema WITHOUT `x-kubernetes-preserve-unknown-fields: true` is closed: an
  unknown (for example misspelt) field is an error, with a "did you mean" hint. The schemas
  do not say `additionalProperties: false` themselves: the API server prunes unknown
  fields silently, and strict client-side validation rejects them;
- `type`, `nullable`, `enum`, `format` (int32, int64, double, byte, date-time),
  `minimum`/`maximum`, `minLength`/`maxLength`, `pattern`, `minItems`/`maxItems`,
  `minProperties`/`maxProperties`, `required`, `additionalProperties`, `items`;
- the logical junctors as structural schemas use them: `oneOf`/`anyOf`/`allOf`/`not`
  (for example `oneOf: [{not: {anyOf: [{required: [exact]}, ...]}}, {required: [exact]},
  ...]`, "at most one of exact/prefix/regex"); their branches constrain values only, so an
  unknown field is judged by the structural schema alone, never inside a branch;
- `x-kubernetes-int-or-string`, `x-kubernetes-list-type: map|set` with
  `x-kubernetes-list-map-keys` (unique items / unique keys);
- `x-kubernetes-validations`: CEL rules are evaluated by cel-python (`CelRules`), with the
  Kubernetes extension functions the bundle uses (`isURL`, `url().getScheme()`,
  `substring`) written on Go-semantics oracles, so a new bundle's rules are checked without
  new code. A rule that cannot be compiled is not evaluated and is reported in
  `Result.unevaluated`, so a caller can insist that nothing was skipped.

What it cannot check (the API server or istiod would): CEL rules using functions beyond those,
admission webhooks (istiod's validation webhook checks more, for example regex syntax and
host names), cross-object references, and the contents of `preserve-unknown-fields` objects
such as a WasmPlugin's `pluginConfig` or an EnvoyFilter's `patch.value`.

Exit status 0 when every document validates (and no CEL rule was skipped), 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import difflib
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import celpy
import yaml
from celpy import celtypes

REPO = Path(__file__).resolve().parents[1]
# Where the bundle is looked for, in order: $ISTIO_CRDS, a copy in the repository, the
# shared copy next to the repository.
CRD_CANDIDATES = [
    REPO / "tests" / "data" / "istio-crds" / "crd-all.gen.yaml",
    REPO.parent / "shared" / "istio-crds" / "crd-all.gen.yaml",
]


def find_crds() -> Optional[Path]:
    """The CRD bundle to use, or None when there is none."""
    env = os.environ.get("ISTIO_CRDS")
    if env:
        return Path(env)
    return next((p for p in CRD_CANDIDATES if p.is_file()), None)


# ----------------------------------------------------------------------------------------------
# YAML loading (duplicate keys are errors, as in kubectl)
# ----------------------------------------------------------------------------------------------

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    mapping: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in mapping
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, "found an unhashable key", key_node.start_mark)
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_documents(path: Path | str) -> list[tuple[int, Any]]:
    """The non-empty YAML documents of a file, with their index in the file."""
    text = Path(path).read_text()
    return [(i, d) for i, d in enumerate(yaml.load_all(text, Loader=_StrictLoader)) if d is not None]


def loads_documents(text: str) -> list[Any]:
    return [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]


# ----------------------------------------------------------------------------------------------
# CEL rules of the bundle: cel-python, with Kubernetes' extension functions
# ----------------------------------------------------------------------------------------------

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")


def go_url_scheme(text: str) -> Optional[str]:
    """The scheme Go's url.ParseRequestURI gives `text` (lower-cased, "" for an absolute path),
    or None when it is not a valid request URI. This is CEL's isURL()/url().getScheme(); the
    authority part is not checked beyond control characters."""
    if not isinstance(text, str) or not text or any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        return None
    m = _SCHEME.match(text)
    if m is None:
        if text.startswith(":"):
            return None  # "missing protocol scheme"
        return "" if text.startswith("/") else None
    return m.group(1).lower()


def _has(obj: Any, key: str) -> bool:
    return isinstance(obj, dict) and key in obj


class CelRules:
    """The bundle's `x-kubernetes-validations` rules, compiled and evaluated by cel-python, with
    the Kubernetes CEL extensions they use (`isURL`, `url(...).getScheme()`, the strings
    library's `substring`) written on our Go-semantics oracles above. A rule that does not
    compile (a function this evaluator lacks) is reported, never passed."""

    def __init__(self) -> None:
        self._env = celpy.Environment()
        self._programs: dict[str, Any] = {}
        self._functions = {
            "isURL": lambda s: celtypes.BoolType(go_url_scheme(str(s)) is not None),
            # url() keeps the text; getScheme() parses it as Go's url.ParseRequestURI does.
            "url": lambda s: celtypes.StringType(str(s)),
            "getScheme": lambda u: celtypes.StringType(go_url_scheme(str(u)) or ""),
            "substring": lambda s, start, end: celtypes.StringType(str(s)[int(start):int(end)]),
        }

    def program(self, rule: str) -> Optional[Any]:
        """The compiled rule, or None when cel-python cannot compile it."""
        if rule not in self._programs:
            try:
                self._programs[rule] = self._env.program(self._env.compile(rule), functions=self._functions)
            except Exception:  # a syntax this evaluator lacks: reported as unevaluated
                self._programs[rule] = None
        return self._programs[rule]

    def holds(self, rule: str, value: Any) -> Optional[bool]:
        """Whether `value` (as `self`) satisfies the rule; None when it cannot be evaluated. A
        CEL runtime error (bad int(), bad duration, missing key) fails the rule."""
        prg = self.program(rule)
        if prg is None:
            return None
        try:
            result = prg.evaluate({"self": celpy.json_to_cel(value)})
        except Exception:
            return False
        return isinstance(result, celtypes.BoolType) and bool(result)


CEL = CelRules()


# ----------------------------------------------------------------------------------------------
# Kubernetes object metadata (the CRD schemas leave it out; the API server validates it)
# ----------------------------------------------------------------------------------------------

_DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_LABEL_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"

OBJECT_META_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": _DNS1123_SUBDOMAIN},
        "generateName": {"type": "string"},
        "namespace": {"type": "string", "maxLength": 63, "pattern": _DNS1123_LABEL},
        "labels": {"type": "object", "x-label-keys": True,
                   "additionalProperties": {"type": "string", "maxLength": 63, "pattern": _LABEL_VALUE}},
        "annotations": {"type": "object", "x-label-keys": True, "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        "uid": {"type": "string"},
        "resourceVersion": {"type": "string"},
        "generation": {"type": "integer", "format": "int64"},
        "creationTimestamp": {"type": "string", "nullable": True},
    },
}


# ----------------------------------------------------------------------------------------------
# The validator
# ----------------------------------------------------------------------------------------------

@dataclass
class Result:
    errors: list[str] = field(default_factory=list)
    # CEL rules that applied to a value but have no implementation here ("path: rule").
    unevaluated: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and not (isinstance(v, float) and not math.isfinite(v))


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": _is_int,
    "number": _is_number,
    "boolean": lambda v: isinstance(v, bool),
}

_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_INT_RANGES = {"int32": (-2**31, 2**31 - 1), "int64": (-2**63, 2**63 - 1)}


def _describe(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean {v!r}".replace("True", "true").replace("False", "false")
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, str):
        return f"string {v!r}"
    return f"{type(v).__name__} {v!r}"


def _same(a: Any, b: Any) -> bool:
    """Equality without Python's True == 1."""
    return type(a) is type(b) and a == b or (_is_number(a) and _is_number(b) and a == b)


def _key_path(path: str, key: Any) -> str:
    k = str(key)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", k):
        return f"{path}.{k}" if path else k
    return f'{path}["{k}"]'


class _Walker:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.unevaluated: list[str] = []

    def err(self, path: str, message: str) -> None:
        self.errors.append(f"{path or '<root>'}: {message}")

    def valid(self, value: Any, schema: dict, path: str) -> bool:
        """Whether `value` satisfies a logical branch (value constraints only, no closed objects)."""
        sub = _Walker()
        sub.check(value, schema, path, structural=False)
        self.unevaluated.extend(sub.unevaluated)
        return not sub.errors

    def check(self, value: Any, s: dict, path: str, structural: bool = True) -> None:
        if value is None:
            if s.get("nullable") or not s:
                return
            self.err(path, "null is not allowed here (remove the key or give it a value)")
            return

        int_or_string = s.get("x-kubernetes-int-or-string") is True
        if int_or_string:
            if not (_is_int(value) or isinstance(value, str)):
                self.err(path, f"must be an integer or a string, got {_describe(value)}")
                return
        else:
            typ = s.get("type")
            if typ is not None:
                check = _TYPE_CHECKS.get(typ)
                if check is None:
                    self.err(path, f"schema has an unknown type {typ!r}")
                    return
                if not check(value):
                    self.err(path, f"must be {'an' if typ[0] in 'aeiou' else 'a'} {typ}, got {_describe(value)}")
                    return

        if "enum" in s and not any(_same(value, e) for e in s["enum"]):
            allowed = ", ".join(str(e) for e in s["enum"])
            self.err(path, f"{_describe(value)} is not one of [{allowed}]")

        if isinstance(value, str):
            self._check_string(value, s, path)
        elif _is_number(value):
            self._check_number(value, s, path)
        elif isinstance(value, list):
            self._check_array(value, s, path, structural)
        elif isinstance(value, dict):
            self._check_object(value, s, path, structural)

        self._check_junctors(value, s, path, int_or_string)
        self._check_cel(value, s, path)

    # -- scalars ---------------------------------------------------------------------------------

    def _check_string(self, v: str, s: dict, path: str) -> None:
        if "minLength" in s and len(v) < s["minLength"]:
            self.err(path, f"{v!r} is shorter than {s['minLength']} characters")
        if "maxLength" in s and len(v) > s["maxLength"]:
            self.err(path, f"{v[:40]!r}... is longer than {s['maxLength']} characters")
        if "pattern" in s and re.search(s["pattern"], v) is None:
            self.err(path, f"{v!r} does not match the pattern {s['pattern']}")
        fmt = s.get("format")
        if fmt == "byte":
            try:
                base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                self.err(path, f"{v!r} is not base64")
        elif fmt == "date-time" and not _DATE_TIME.match(v):
            self.err(path, f"{v!r} is not an RFC 3339 date-time")

    def _check_number(self, v: float, s: dict, path: str) -> None:
        fmt = s.get("format")
        if fmt in _INT_RANGES and _is_int(v):
            lo, hi = _INT_RANGES[fmt]
            if not lo <= v <= hi:
                self.err(path, f"{v} does not fit in {fmt}")
        if "minimum" in s:
            if v < s["minimum"] or (s.get("exclusiveMinimum") is True and v == s["minimum"]):
                self.err(path, f"{v} is below the minimum {s['minimum']}")
        if "maximum" in s:
            if v > s["maximum"] or (s.get("exclusiveMaximum") is True and v == s["maximum"]):
                self.err(path, f"{v} is above the maximum {s['maximum']}")

    # -- containers ------------------------------------------------------------------------------

    def _check_array(self, v: list, s: dict, path: str, structural: bool) -> None:
        if "minItems" in s and len(v) < s["minItems"]:
            self.err(path, f"needs at least {s['minItems']} items, has {len(v)}")
        if "maxItems" in s and len(v) > s["maxItems"]:
            self.err(path, f"allows at most {s['maxItems']} items, has {len(v)}")
        items = s.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(v):
                self.check(item, items, f"{path}[{i}]", structural)
        list_type = s.get("x-kubernetes-list-type")
        if list_type == "set":
            seen: list = []
            for i, item in enumerate(v):
                if any(_same(item, x) for x in seen):
                    self.err(f"{path}[{i}]", f"duplicate entry {item!r} in a set")
                seen.append(item)
        elif list_type == "map":
            keys = s.get("x-kubernetes-list-map-keys", [])
            seen_keys: dict = {}
            for i, item in enumerate(v):
                if not isinstance(item, dict):
                    continue
                k = tuple(repr(item.get(key)) for key in keys)
                if k in seen_keys:
                    self.err(f"{path}[{i}]", f"duplicate entry for key {', '.join(keys)} (same as [{seen_keys[k]}])")
                seen_keys.setdefault(k, i)

    def _check_object(self, v: dict, s: dict, path: str, structural: bool) -> None:
        props: dict = s.get("properties", {})
        addl = s.get("additionalProperties")
        open_ = s.get("x-kubernetes-preserve-unknown-fields") is True
        for key, item in v.items():
            kpath = _key_path(path, key)
            if not isinstance(key, str):
                self.err(kpath, f"keys must be strings, got {_describe(key)}")
                continue
            if s.get("x-label-keys") and not re.match(_LABEL_KEY, key):
                self.err(kpath, f"{key!r} is not a valid key (prefix/name, name of [A-Za-z0-9_.-], at most 63)")
            if key in props:
                self.check(item, props[key], kpath, structural)
            elif isinstance(addl, dict):
                self.check(item, addl, kpath, structural)
            elif addl is True or open_ or not structural:
                continue
            else:
                hint = difflib.get_close_matches(key, list(props), n=1, cutoff=0.6)
                known = f"did you mean {hint[0]!r}?" if hint else f"known fields: {', '.join(sorted(props)) or 'none'}"
                self.err(kpath, f"unknown field {key!r} ({known})")
        for key in s.get("required", []):
            if key not in v:
                self.err(_key_path(path, key), "required field is missing")
        if "minProperties" in s and len(v) < s["minProperties"]:
            self.err(path, f"needs at least {s['minProperties']} entries")
        if "maxProperties" in s and len(v) > s["maxProperties"]:
            self.err(path, f"allows at most {s['maxProperties']} entries")

    # -- junctors and CEL ------------------------------------------------------------------------

    def _check_junctors(self, value: Any, s: dict, path: str, int_or_string: bool) -> None:
        for branch in s.get("allOf", []):
            sub = _Walker()
            sub.check(value, branch, path, structural=False)
            self.errors.extend(sub.errors)
            self.unevaluated.extend(sub.unevaluated)
        if "anyOf" in s and not int_or_string:
            if not any(self.valid(value, b, path) for b in s["anyOf"]):
                self.err(path, f"matches none of the allowed forms ({_branches(s['anyOf'])})")
        if "oneOf" in s:
            branches = s["oneOf"]
            matched = [b for b in branches if self.valid(value, b, path)]
            if len(matched) != 1:
                self.err(path, _one_of_message(value, branches, len(matched)))
        if "not" in s and self.valid(value, s["not"], path):
            self.err(path, f"must not match {_branches([s['not']])}")

    def _check_cel(self, value: Any, s: dict, path: str) -> None:
        for rule in s.get("x-kubernetes-validations", []):
            text = rule.get("rule", "")
            ok = CEL.holds(text, value)
            if ok is None:
                self.unevaluated.append(f"{path or '<root>'}: {text}")
                continue
            if not ok:
                self.err(path, rule.get("message") or f"fails the validation rule {text!r}")


def _branches(branches: list) -> str:
    parts = []
    for b in branches:
        if set(b) == {"required"}:
            parts.append("has " + "+".join(b["required"]))
        elif "not" in b:
            parts.append("not(" + _branches([b["not"]]) + ")")
        elif "anyOf" in b:
            parts.append("any of (" + _branches(b["anyOf"]) + ")")
        elif "type" in b:
            parts.append(b["type"])
        else:
            parts.append("{" + ", ".join(sorted(b)) + "}")
    return ", ".join(parts)


def _one_of_message(value: Any, branches: list, matched: int) -> str:
    # Istio's shape: oneOf [not(anyOf(required x, required y, ...)), required x, required y, ...]
    fields = [b["required"][0] for b in branches if set(b) == {"required"} and len(b["required"]) == 1]
    if fields and len(fields) == len(branches) - (1 if any("not" in b for b in branches) else 0):
        present = [f for f in fields if isinstance(value, dict) and f in value]
        at = "at most" if any("not" in b for b in branches) else "exactly"
        return f"set {at} one of {', '.join(fields)} (found: {', '.join(present) or 'none'})"
    return f"must match exactly one of ({_branches(branches)}), matches {matched}"


# ----------------------------------------------------------------------------------------------
# The CRD bundle
# ----------------------------------------------------------------------------------------------

@dataclass
class _Version:
    schema: dict
    served: bool
    deprecated: bool


class CrdBundle:
    """Schemas of a CRD bundle by (group, version, kind)."""

    def __init__(self, path: Path | str | None = None):
        path = path if path is not None else find_crds()
        if path is None:
            raise FileNotFoundError("no Istio CRD bundle: set ISTIO_CRDS or put it at one of "
                                    + ", ".join(str(p) for p in CRD_CANDIDATES))
        self.path = Path(path)
        self.versions: dict[tuple[str, str, str], _Version] = {}
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the bundle is ~1 MB
        for doc in yaml.load_all(self.path.read_text(), Loader=loader):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for v in spec["versions"]:
                schema = (v.get("schema") or {}).get("openAPIV3Schema")
                if schema is None:
                    continue
                key = (spec["group"], v["name"], spec["names"]["kind"])
                self.versions[key] = _Version(schema, bool(v.get("served", True)), bool(v.get("deprecated", False)))

    def kinds(self) -> set[tuple[str, str, str]]:
        return set(self.versions)

    def lookup(self, api_version: Any, kind: Any) -> tuple[Optional[_Version], str]:
        """(version, "") or (None, why not)."""
        if not isinstance(api_version, str) or "/" not in api_version:
            return None, f"apiVersion {api_version!r} is not group/version (core kinds have no CRD)"
        group, version = api_version.rsplit("/", 1)
        v = self.versions.get((group, version, kind))
        if v is None:
            known = sorted(f"{g}/{ver}" for g, ver, k in self.versions if k == kind)
            if known:
                return None, f"{kind} has no version {api_version} in the bundle (known: {', '.join(known)})"
            return None, f"no CRD for kind {kind!r} in group {group!r} in {self.path.name}"
        if not v.served:
            return None, f"{api_version} {kind} is not served"
        return v, ""

    def validate(self, doc: Any) -> Result:
        result = Result()
        if not isinstance(doc, dict):
            result.errors.append(f"<root>: a manifest must be a mapping, got {_describe(doc)}")
            return result
        for key in ("apiVersion", "kind"):
            if not isinstance(doc.get(key), str) or not doc.get(key):
                result.errors.append(f"{key}: required string is missing")
        if result.errors:
            return result
        version, why = self.lookup(doc["apiVersion"], doc["kind"])
        if version is None:
            result.errors.append(f"<root>: {why}")
            return result
        root = dict(version.schema)
        root["properties"] = {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": OBJECT_META_SCHEMA,
            **root.get("properties", {}),
        }
        root["required"] = ["metadata", *root.get("required", [])]
        walker = _Walker()
        walker.check(doc, root, "")
        meta = doc.get("metadata")
        if isinstance(meta, dict) and "name" not in meta and "generateName" not in meta:
            walker.err("metadata.name", "required field is missing")
        result.errors.extend(walker.errors)
        result.unevaluated.extend(walker.unevaluated)
        return result


def validate_files(bundle: CrdBundle, paths: Iterable[Path | str]) -> dict[str, Result]:
    """Validates every document of every file; keys are "<file>#<index> <kind>/<name>"."""
    out: dict[str, Result] = {}
    for path in paths:
        try:
            docs = load_documents(path)
        except yaml.YAMLError as e:
            out[f"{path}"] = Result(errors=[f"YAML: {e}"])
            continue
        for i, doc in docs:
            name = doc.get("metadata", {}).get("name", "?") if isinstance(doc, dict) else "?"
            kind = doc.get("kind", "?") if isinstance(doc, dict) else "?"
            out[f"{path}#{i} {kind}/{name}"] = bundle.validate(doc)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path, help="YAML manifests")
    ap.add_argument("--crds", type=Path, default=None,
                    help="CRD bundle (default: $ISTIO_CRDS, else " + " or ".join(str(p) for p in CRD_CANDIDATES) + ")")
    args = ap.parse_args(argv)
    bundle = CrdBundle(args.crds)
    failed = False
    for name, result in validate_files(bundle, args.files).items():
        status = "ok" if result.ok and not result.unevaluated else "FAIL"
        print(f"{status:4} {name}")
        for e in result.errors:
            print(f"     error: {e}")
        for u in result.unevaluated:
            print(f"     CEL rule not evaluated: {u}")
        failed |= status != "ok"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
