"""Reads the normalization vectors out of ``tests/normalization_vectors.rs``.

The Rust file is the single source of the published vectors; this parser reads
its tables (a small tokenizer for Rust string literals, comments and tuples), so
the Python tests check the very cases the Rust tests check, and break loudly if
the file's shape changes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, List, Optional, Tuple

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "'": "'"}


def _tokens(text: str) -> List[Tuple[str, Any]]:
    """("str", value), ("ident", name) or ("punct", char), comments skipped."""
    out: List[Tuple[str, Any]] = []
    i = 0
    while i < len(text):
        c = text[i]
        if text.startswith("//", i):
            i = text.index("\n", i) if "\n" in text[i:] else len(text)
        elif c.isspace():
            i += 1
        elif c == '"':
            i += 1
            value = []
            while text[i] != '"':
                if text[i] == "\\":
                    e = text[i + 1]
                    if e == "u":
                        end = text.index("}", i)
                        value.append(chr(int(text[i + 3 : end], 16)))
                        i = end + 1
                        continue
                    if e == "\n":  # line continuation
                        i += 2
                        while text[i].isspace():
                            i += 1
                        continue
                    if e not in _ESCAPES:
                        raise ValueError(f"unsupported escape \\{e} in the vectors file")
                    value.append(_ESCAPES[e])
                    i += 2
                else:
                    value.append(text[i])
                    i += 1
            out.append(("str", "".join(value)))
            i += 1
        elif c.isalnum() or c == "_":
            m = re.match(r"[A-Za-z0-9_]+(::[A-Za-z0-9_]+)*", text[i:])
            assert m
            out.append(("ident", m.group(0)))
            i += len(m.group(0))
        else:
            out.append(("punct", c))
            i += 1
    return out


def _value(toks: List[Tuple[str, Any]], pos: int) -> Tuple[Any, int]:
    """Parses one tuple element: a string, an identifier, or Some/Ok/Err(...)."""
    kind, value = toks[pos]
    if kind == "str":
        return value, pos + 1
    if kind == "ident":
        if value in ("Some", "Ok", "Err"):
            assert toks[pos + 1] == ("punct", "("), toks[pos : pos + 3]
            inner, pos = _value(toks, pos + 2)
            assert toks[pos] == ("punct", ")"), toks[pos]
            return (value, inner), pos + 1
        if value in ("true", "false"):
            return value == "true", pos + 1
        return ("ident", value), pos + 1
    raise ValueError(f"unexpected token {toks[pos]!r} in a vectors table")


def table(source: str, name: str) -> List[tuple]:
    """The tuples of the Rust constant ``name`` (``const NAME: ... = &[ ... ];``)."""
    m = re.search(r"const " + re.escape(name) + r"\b[^=]*=\s*&\[", source)
    if not m:
        raise ValueError(f"table {name} not found in the vectors file")
    toks = _tokens(source[m.end() :])
    rows: List[tuple] = []
    pos = 0
    while toks[pos] != ("punct", "]"):
        assert toks[pos] == ("punct", "("), (name, toks[pos])
        pos += 1
        row = []
        while toks[pos] != ("punct", ")"):
            value, pos = _value(toks, pos)
            row.append(value)
            if toks[pos] == ("punct", ","):
                pos += 1
        rows.append(tuple(row))
        pos += 1
        if toks[pos] == ("punct", ","):
            pos += 1
    return rows


def expected(value: Tuple[str, str]) -> Tuple[Optional[str], Optional[str]]:
    """``Ok(x)`` → (x, None); ``Err(code)`` → (None, code)."""
    tag, inner = value
    assert tag in ("Ok", "Err"), value
    return (inner, None) if tag == "Ok" else (None, inner)


def region(value: Any) -> Optional[str]:
    """``Some("US")`` → "US"; ``None`` → None."""
    if value == ("ident", "None"):
        return None
    tag, inner = value
    assert tag == "Some", value
    return inner


def load(path: Path) -> str:
    return path.read_text(encoding="utf-8")
