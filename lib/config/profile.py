"""A profile (``configs/mimic-cxr.yaml``): the keys of params.yaml that a kind of run sets
differently, deep-merged into params.yaml with its comments and order kept, then
validated as every stage validates it (``lib.config.loader.parse_params``).

A profile names only keys that params.yaml has (a typo is an error, never a new key);
lists are values, replaced whole. ``--set key=value`` (a YAML value) goes on top of it.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML

from lib.config.loader import parse_params
from lib.errors import ParamsError
from lib.io import atomic_path


@dataclasses.dataclass(frozen=True)
class Change:
    key: str  # dotted, e.g. "train.epochs"
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {_show(self.old)} -> {_show(self.new)}"


def _yaml() -> YAML:
    """Round-trip YAML written as params.yaml is: comments, order, quotes and the
    spelling of numbers (1.0e-4) kept, block lists indented under their key, null as null."""
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096  # never wrap a long line
    y.indent(mapping=2, sequence=4, offset=2)
    y.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return y


def read_profile(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise ParamsError(f"{path}: profile not found; give a file such as configs/mimic-cxr.yaml")
    profile = _yaml().load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(profile, Mapping):
        raise ParamsError(f"{path}: a profile maps sections to keys, got {profile!r}")
    return profile


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """``["data.root=/x", "train.epochs=3"]`` -> a nested mapping, each value read as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ParamsError(f"--set {item!r}: give key=value, e.g. --set data.root=/datasets/x")
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParamsError(f"--set {item!r}: {part} is given a value elsewhere too")
        node[leaf] = _yaml().load(text) if text.strip() else None
    return out


def merge(doc: Any, profile: Mapping[str, Any], source: str, prefix: str = "") -> list[Change]:
    """Write ``profile``'s values into ``doc`` (params.yaml's round-trip mapping) in place;
    every key must already be in ``doc``. Returns the values that changed."""
    changes: list[Change] = []
    for key, value in profile.items():
        dotted = f"{prefix}{key}"
        if key not in doc:
            where = f"'{prefix[:-1]}'" if prefix else "params.yaml"
            raise ParamsError(
                f"{source}: unknown key {dotted!r} (params.yaml has no such key); valid keys "
                f"of {where}: {sorted(doc)}"
            )
        old = doc[key]
        if isinstance(value, Mapping):
            if not isinstance(old, Mapping):
                raise ParamsError(
                    f"{source}: {dotted} is a value in params.yaml ({_show(old)}), not a "
                    "section; give it a value, not keys"
                )
            changes += merge(old, value, source, f"{dotted}.")
        elif isinstance(old, Mapping):
            raise ParamsError(
                f"{source}: {dotted} is a section of params.yaml; give its keys "
                f"({sorted(old)}), not a value ({_show(value)})"
            )
        elif _plain(old) != _plain(value):
            doc[key] = value
            changes.append(Change(dotted, _plain(old), _plain(value)))
    return changes


def apply_profile(
    params_path: Path, profile_path: Path, sets: Iterable[str] = (), write: bool = True
) -> list[Change]:
    """Merge the profile (then ``sets``) into params.yaml, validate the result, and write it
    atomically (unless ``write`` is false). Nothing is written when a check fails."""
    y = _yaml()
    doc = y.load(params_path.read_text(encoding="utf-8"))
    changes = merge(doc, read_profile(profile_path), str(profile_path))
    changes += merge(doc, parse_sets(sets), "--set")
    buf = io.StringIO()
    y.dump(doc, buf)
    text = buf.getvalue()
    try:
        parse_params(yaml.safe_load(text), source=str(params_path))
    except ParamsError as err:
        raise ParamsError(f"with {profile_path} applied: {err}") from err
    if write and changes:
        with atomic_path(params_path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return changes


def _plain(value: Any) -> Any:
    """A round-trip value as plain Python (ruamel's ScalarFloat, CommentedSeq...)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value


def _show(value: Any) -> str:
    return (
        yaml.safe_dump(_plain(value), default_flow_style=True, width=4096)
        .strip()
        .removesuffix("\n...")
    )
