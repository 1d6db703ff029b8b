"""The ``params`` block: every key of ``pipeline.params.Params`` with its type, default, allowed
values and the field's comment read from the source, and the value in ``params.yaml`` where it
differs (with that line's comment)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.formatting import markdown_table
from pipeline.params import Params, flatten, load_params, to_dict
from tools.project.docs.common import DocsError


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the source of dataclass ``cls``: the comment lines right above
    it, then the comment at the end of its line(s)."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    out = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, n = [], node.lineno - 1
        while n in comments and lines[n - 1].lstrip().startswith("#"):
            above.insert(0, comments[n])
            n -= 1
        trailing = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        out[node.target.id] = " ".join(above + trailing)
    return out


def yaml_comments(text: str) -> dict[str, str]:
    """Dotted key -> the comment at the end of its line in a block-style YAML file."""
    out, stack = {}, []
    for line in text.splitlines():
        m = re.match(r"^( *)([A-Za-z_]\w*):([^#]*)(?:#(.*))?$", line)
        if not m:
            continue
        while stack and stack[-1][0] >= len(m[1]):
            stack.pop()
        stack.append((len(m[1]), m[2]))
        out[".".join(k for _, k in stack)] = (m[4] or "").strip()
    return out


def leaves(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any, str]]:
    """(dotted key, field, type, comment) of every leaf of the params tree, in source order;
    sections yield (key, field, None, comment) before their leaves."""
    hints, comments = typing.get_type_hints(cls), field_comments(cls)
    for f in dataclasses.fields(cls):
        key, tp = prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield key, f, None, comments.get(f.name, "")
            yield from leaves(tp, key + ".")
        else:
            if not comments.get(f.name):
                raise DocsError(f"pipeline/params.py: {cls.__name__}.{f.name} has no comment")
            yield key, f, tp, comments[f.name]


def yaml_value(value: Any) -> str:
    """A value as params.yaml writes it (floats keep a dot: 5.0e-4)."""
    if isinstance(value, list):
        return "[" + ", ".join(map(yaml_value, value)) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value and abs(value) < 1e-3:
        mantissa, exponent = f"{value:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return str(value)


def allowed(meta: Any, tp: Any) -> str:
    parts = []
    if "choices" in meta:
        each = "each of " if typing.get_origin(tp) is list else ""
        parts.append(each + ", ".join(f"`{c}`" for c in meta["choices"]))
    parts += [f"{symbol} {yaml_value(meta[name])}" for name, symbol in
              (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if name in meta]
    if meta.get("nonempty"):
        parts.append("non-empty")
    return ", ".join(parts) or "-"


def type_name(tp: Any) -> str:
    return str(tp) if typing.get_origin(tp) else tp.__name__


def params_block(root: Path) -> str:
    defaults = flatten(to_dict(Params()))
    mine = flatten(to_dict(load_params(root / "params.yaml")))
    notes = yaml_comments((root / "params.yaml").read_text())
    sections: dict[str, tuple[str, list[list[str]]]] = {"": ("", [])}
    for key, f, tp, comment in leaves(Params):
        if tp is None:
            sections[key] = (comment, [])
            continue
        here = mine[key]
        yaml_cell = "" if here == defaults[key] else f"`{yaml_value(here)}`"
        note = notes.get(key, "").replace("(default run)", "").strip()
        if yaml_cell and note:
            yaml_cell += f" ({note})"
        section = key.rpartition(".")[0]
        sections[section][1].append([f"`{key}`", f"`{type_name(tp)}`",
                                     f"`{yaml_value(defaults[key])}`", allowed(f.metadata, tp),
                                     yaml_cell, comment])
    header = ["key", "type", "default", "allowed", "params.yaml", "meaning"]
    parts = []
    for section, (comment, rows) in sections.items():
        if rows:
            title = f"### `{section}`" if section else "### top level"
            parts.append("\n\n".join(s for s in (title, comment, markdown_table(header, rows))
                                       if s))
    return "\n\n".join(parts)
