"""YAML loading that remembers line numbers, so errors in inventories and playbooks can point at them.

It refuses what plain YAML would let through silently: a key given twice in one mapping (YAML keeps the last,
so a second `hosts:` in a group would drop the first block), and tags it does not read (`!unsafe`).

Ansible Vault is read here, for every file the inventory and playbooks load: a `!vault` value and a whole
encrypted file are decrypted with the passwords given to `engine.vault.configure`; without one, or with a wrong
one, the file (and line) is an error. What they decrypt to is secret: redacted from every output.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path

import yaml

from tritonfleet import secrets
from tritonfleet.engine import vault
from tritonfleet.errors import TritonfleetError

# libyaml's parser when PyYAML has it: a 50,000-host inventory loads in a second instead of six
_BASE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"


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

    def construct_vault(self, node):
        """A `!vault` value: the text it decrypts to, a secret from here on."""
        if not isinstance(node, yaml.ScalarNode):
            raise _Refused("!vault tags a list or mapping: it must tag the vaulttext", node.start_mark,
                           "paste the output of `ansible-vault encrypt_string` as it is")
        try:
            value = vault.decrypt(node.value)
        except vault.VaultError as exc:
            raise _Refused(f"cannot decrypt this !vault value: {exc.message}", node.start_mark, exc.hint) from None
        secrets.register([value])
        return value

    def refuse_tag(self, node):
        raise _Refused(f"YAML tag {node.tag} is not supported", node.start_mark,
                       "write the value as plain YAML (text, number, list or mapping)")


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _LineLoader.construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _LineLoader.construct_sequence)
_LineLoader.add_constructor("!vault", _LineLoader.construct_vault)
_LineLoader.add_constructor(None, _LineLoader.refuse_tag)


def line_of(node, key=None) -> int | None:
    """Line of `key` in a LineDict, or of the node itself; None for plain values."""
    if key is not None and isinstance(node, LineDict):
        return node.key_lines.get(key, node.line)
    return getattr(node, "line", None)


def read_text(path: Path, error_class=TritonfleetError, what: str = "YAML file") -> str:
    """A text file's content; one that cannot be read, or is not UTF-8, is `error_class` naming the file."""
    try:
        return path.read_text()
    except OSError as exc:
        raise error_class(f"cannot read: {exc.strerror}", file=str(path),
                          hint="check the path and its permissions") from None
    except UnicodeDecodeError:
        raise error_class("not a text file (it is not UTF-8)", file=str(path),
                          hint=f"name the {what}, not a binary one") from None


def load_yaml(path: str | Path, error_class=TritonfleetError):
    """Parse a YAML file; a syntax error becomes `error_class` with the file and line."""
    path = Path(path)
    text = read_text(path, error_class)
    encrypted = vault.is_encrypted(text)
    if encrypted:
        try:
            text = vault.decrypt(text)
        except vault.VaultError as exc:
            raise error_class(f"cannot decrypt this file: {exc.message}", file=str(path), line=1,
                              hint=exc.hint) from None
    try:
        data = yaml.load(text, Loader=_LineLoader)
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
    if encrypted:
        secrets.register(_texts(data))
    return data


def _texts(data):
    """The text values (not keys) of a decrypted file: every one is treated as secret. Numbers and booleans are
    not, or a port or `true` in a vaulted file would be hidden from every line printed."""
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for value in data.values():
            yield from _texts(value)
    elif isinstance(data, list):
        for value in data:
            yield from _texts(value)
