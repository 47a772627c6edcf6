"""TF Serving's ``models.config`` (a ``ModelServerConfig`` text proto): read the entries of an existing
file, add or replace entries by name and write it atomically, keeping the other entries.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from keras_relaxeq.utils import atomic_write

MODELS_CONFIG = "models.config"


def _join_base(prefix: str, name: str) -> str:
    return prefix.rstrip("/") + "/" + name if prefix else name


def _strip_comments(text: str) -> str:
    out, i, in_str, quote = [], 0, False, ""
    while i < len(text):
        c = text[i]
        if in_str:
            out.append(c)
            if c == "\\" and i + 1 < len(text):
                out.append(text[i + 1])
                i += 1
            elif c == quote:
                in_str = False
        elif c in "\"'":
            in_str, quote = True, c
            out.append(c)
        elif c == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _match_brace(text: str, open_idx: int) -> int:
    depth, i, in_str, quote = 0, open_idx, False, ""
    while i < len(text):
        c = text[i]
        if in_str:
            if c == "\\":
                i += 1
            elif c == quote:
                in_str = False
        elif c in "\"'":
            in_str, quote = True, c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError("unbalanced braces")


def _proto_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unquote(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


def read_models_config(path) -> list[tuple[str, str]]:
    """``[(name, config_block_body)]`` of an existing ``models.config`` (empty if absent)."""
    path = Path(path)
    if not path.exists():
        return []
    text = _strip_comments(path.read_text(encoding="utf-8"))
    if not text.strip():
        return []
    m = re.search(r"\bmodel_config_list\s*:?\s*\{", text)
    if not m:
        raise ValueError(f"{path} is not a TF Serving model config (no model_config_list); refusing to overwrite it.")
    end = _match_brace(text, m.end() - 1)
    body = text[m.end() : end]
    blocks, pos = [], 0
    for cm in re.finditer(r"\bconfig\s*:?\s*\{", body):
        if cm.start() < pos:
            continue
        close = _match_brace(body, cm.end() - 1)
        block = body[cm.end() : close]
        nm = re.search(r'\bname\s*:\s*"((?:[^"\\]|\\.)*)"', block)
        if not nm:
            raise ValueError(f"{path}: a config block has no name")
        blocks.append((_unquote(nm.group(1)), block.strip()))
        pos = close + 1
    return blocks


def format_model_config(name: str, base_path: str, platform: str = "tensorflow") -> str:
    return (
        f"name: {_proto_str(name)}\n    base_path: {_proto_str(base_path)}\n    model_platform: {_proto_str(platform)}"
    )


def update_models_config(base_dir, models: Mapping[str, str], config_path=None) -> Path:
    """Add or replace ``{name: base_path}`` entries in ``models.config``, keeping the others."""
    config_path = Path(config_path) if config_path else Path(base_dir) / MODELS_CONFIG
    blocks = dict(read_models_config(config_path))  # preserves order, replaces by name
    for name, base_path in models.items():
        blocks[name] = format_model_config(name, base_path)
    lines = ["model_config_list {"]
    for body in blocks.values():
        body_lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
        lines.append("  config {")
        lines.extend("    " + ln for ln in body_lines)
        lines.append("  }")
    lines.append("}")
    atomic_write(config_path, "\n".join(lines) + "\n")
    return config_path


__all__ = ["MODELS_CONFIG", "format_model_config", "read_models_config", "update_models_config"]
