"""YAML loading that remembers line numbers, so errors in inventories and playbooks can point at them.

It refuses what plain YAML would let through silently: a key given twice in one mapping (YAML keeps the last,
so a second `hosts:` in a group would drop the first block), and tags it does not read (Ansible's `!vault`).
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path

import yaml

from tritonfleet.errors import TritonfleetError

# libyaml's parser when PyYAML has it: a 50,000-host inventory loads in a second instead of six
_BASE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"
VAULT_FILE_HEADER = "$ANSIBLE_VAULT;"
VAULT_HINT = ("Ansible Vault lands in a later release: decrypt it (`ansible-vault decrypt`), or keep the secret "
              "out of the inventory (the sudo password: tritonfleet_become_password_env)")


class LineDict(dict):
    """A mapping from YAML that knows the line it starts on and the line of each key (1-based)."""

    line: int = 0
    key_lines: dict


class LineList(list):
    """A sequence from YAML that knows the line it starts on (1-based)."""

    line: int = 0


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that is refused anyway, with why (`problem`) and what to do (`note`)."""

    def __init__(self, problem: str, mark, hint: str):
        super().__init__(problem=problem, problem_mark=mark, note=hint)


class _LineLoader(_BASE_LOADER):
    def construct_mapping(self, node, deep=False):
        self._refuse_duplicate_keys(node)
        mapping = LineDict(super().construct_mapping(node, deep=True))
        mapping.line = node.start_mark.line + 1
        # after the merge keys (`<<`) were flattened into node.value: merged keys get their anchor's line
        mapping.key_lines = {self.construct_object(k, deep=True): k.start_mark.line + 1 for k, _ in node.value}
        return mapping

    def _refuse_duplicate_keys(self, node) -> None:
        first: dict = {}  # key -> (its line, the key as first read)
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # SafeConstructor reports it
            line = key_node.start_mark.line + 1
            if key in first:
                first_line, first_key = first[key]
                if type(first_key) is type(key):
                    raise _Refused(f"key {key!r} is given twice in one mapping, at lines {first_line} and {line}: "
                                   "YAML would silently keep only the last", key_node.start_mark,
                                   "merge the two into one (two `hosts:` or `vars:` in a group: put them together)")
                raise _Refused(f"keys {first_key!r} (line {first_line}) and {key!r} (line {line}) are one key once "
                               "read (`yes` and `1` are both true): the second would silently replace the first",
                               key_node.start_mark, "quote keys meant as text, e.g. \"1\": {}")
            first[key] = (line, key)

    def construct_sequence(self, node, deep=False):
        seq = LineList(super().construct_sequence(node, deep=True))
        seq.line = node.start_mark.line + 1
        return seq

    def refuse_tag(self, node):
        if node.tag == "!vault":
            raise _Refused("an Ansible Vault encrypted value (!vault) is not supported yet", node.start_mark,
                           VAULT_HINT)
        raise _Refused(f"YAML tag {node.tag} is not supported", node.start_mark,
                       "write the value as plain YAML (text, number, list or mapping)")


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _LineLoader.construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _LineLoader.construct_sequence)
_LineLoader.add_constructor(None, _LineLoader.refuse_tag)


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
    except UnicodeDecodeError:
        raise error_class("not a text file (it is not UTF-8)", file=str(path),
                          hint="name the YAML file, not a binary one") from None
    if text.startswith(VAULT_FILE_HEADER):
        raise error_class("the file is encrypted with Ansible Vault, which is not supported yet", file=str(path),
                          line=1, hint=VAULT_HINT)
    try:
        return yaml.load(text, Loader=_LineLoader)
    except _Refused as exc:
        raise error_class(exc.problem, file=str(path), line=exc.problem_mark.line + 1, hint=exc.note) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise error_class(f"YAML syntax error: {problem}", file=str(path), line=line,
                          hint="fix the YAML at that line (indentation, quotes, colons)") from None
    except yaml.YAMLError as exc:
        raise error_class(f"YAML error: {exc}", file=str(path)) from None
