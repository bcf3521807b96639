"""YAML loading that remembers line numbers, so errors in inventories and playbooks can point at them."""

from __future__ import annotations

from pathlib import Path

import yaml

from tritonfleet.errors import TritonfleetError


class LineDict(dict):
    """A mapping from YAML that knows the line it starts on and the line of each key (1-based)."""

    line: int = 0
    key_lines: dict


class LineList(list):
    """A sequence from YAML that knows the line it starts on (1-based)."""

    line: int = 0


class _LineLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        mapping = LineDict(super().construct_mapping(node, deep=True))
        mapping.line = node.start_mark.line + 1
        mapping.key_lines = {}
        for key_node, _ in node.value:
            try:
                key = self.construct_object(key_node, deep=True)
                mapping.key_lines[key] = key_node.start_mark.line + 1
            except TypeError:
                pass
        return mapping

    def construct_sequence(self, node, deep=False):
        seq = LineList(super().construct_sequence(node, deep=True))
        seq.line = node.start_mark.line + 1
        return seq


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _LineLoader.construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _LineLoader.construct_sequence)


def line_of(node, key=None) -> int | None:
    """Line of `key` in a LineDict, or of the node itself; None for plain values."""
    if key is not None and isinstance(node, LineDict):
        return node.key_lines.get(key, node.line)
    return getattr(node, "line", None)


def load_yaml(path: str | Path, error_class=TritonfleetError):
    """Parse a YAML file; a syntax error becomes `error_class` with the file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise error_class(f"cannot read: {exc.strerror}", file=str(path),
                          hint="check the path and its permissions") from None
    try:
        return yaml.load(text, Loader=_LineLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise error_class(f"YAML syntax error: {problem}", file=str(path), line=line,
                          hint="fix the YAML at that line (indentation, quotes, colons)") from None
    except yaml.YAMLError as exc:
        raise error_class(f"YAML error: {exc}", file=str(path)) from None
