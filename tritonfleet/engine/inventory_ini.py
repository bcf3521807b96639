"""Ansible's INI inventory format, read as ansible-core's ini plugin reads it.

    gpu[01:04] ansible_user=deploy     # hosts before any section are in `ungrouped`
    [lab]                              # a group and its hosts: a host pattern, then key=value vars
    gpu05:2222 triton_http_port=9000
    [lab:vars]                         # key=value, one a line
    ansible_user = root
    [fleet:children]                   # group names, one a line
    lab

Values are Python literals where they parse as one (ast.literal_eval, as Ansible's `_parse_value`): `2222` is a
number, `True` a boolean, `[1, 2]` a list, anything else text. On a host line the words are split as a shell
would first, so `x="1"` is the number 1 there and the text "1" in a `:vars` section (Ansible's documentation says
`:vars` values are always text; ansible-core reads them as literals too, and so does this).
A `[group:vars]` or a child in `[group:children]` naming a group that is never defined is refused, as in Ansible.
"""

from __future__ import annotations

import ast
import re
import shlex
import warnings
from dataclasses import dataclass, field

from tritonfleet.engine.inventory_data import InventoryData
from tritonfleet.engine.inventory_yaml import host_pattern
from tritonfleet.errors import InventoryError

SECTION_TYPES = ("hosts", "children", "vars")
COMMENT_MARKERS = ("#", ";")
_SECTION = re.compile(r"\[([^:\]\s]+)(?::(\w+))?\]\s*(?:#.*)?")
_GROUP_NAME = re.compile(r"([^:\]\s]+)\s*(?:#.*)?")
SECTION_HINT = "a section is [group], [group:vars] or [group:children], with no spaces"


@dataclass
class _Pending:
    """A group named before it is defined: in a `[name:vars]` header, or as a child in `[parent:children]`."""

    line: int
    kind: str  # "vars" or "children"
    parents: list = field(default_factory=list)


def read_ini_inventory(text: str, file: str, inventory: InventoryData) -> None:
    pending: dict[str, _Pending] = {}
    group, kind = "ungrouped", "hosts"
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(COMMENT_MARKERS):
            continue
        origin = (file, number)
        section = _SECTION.fullmatch(line)
        if section:
            group, kind = section.group(1), section.group(2) or "hosts"
            _open_section(group, kind, inventory, pending, origin)
        elif line.startswith("[") and line.endswith("]"):
            raise _error(f"invalid section header {line!r}", origin, SECTION_HINT)
        elif kind == "hosts":
            _read_host_line(line, group, inventory, origin)
        elif kind == "vars":
            var, value = _read_var_line(line, origin)
            inventory.set_var(group, var, value, origin)
        else:
            child = _GROUP_NAME.fullmatch(line)
            if not child:
                raise _error(f"expected a group name, got {line!r}", origin, "name one child group a line")
            if child.group(1) in inventory.groups:
                inventory.add_child(group, child.group(1), origin)
            else:
                pending.setdefault(child.group(1), _Pending(number, "children")).parents.append(group)
    for name, declared in pending.items():
        if declared.kind == "vars":
            raise _error(f"section [{name}:vars] is for a group that is never defined", (file, declared.line),
                         f"define the group with a [{name}] or [{name}:children] section, or fix the name")
        raise _error(f"section [{declared.parents[-1]}:children] names group '{name}', which is never defined",
                     (file, declared.line), f"define it with a [{name}] section (empty if it has no hosts)")


def _open_section(group: str, kind: str, inventory: InventoryData, pending: dict, origin: tuple) -> None:
    if kind not in SECTION_TYPES:
        raise _error(f"section [{group}:{kind}] has unknown type '{kind}'", origin, SECTION_HINT)
    if group not in inventory.groups:
        if kind == "vars" and group not in pending:
            pending[group] = _Pending(origin[1], "vars")
        inventory.add_group(group, origin)
    if group in pending and kind != "vars":
        declared = pending.pop(group)
        if declared.kind == "children":
            for parent in declared.parents:
                inventory.add_child(parent, group, origin)


def _read_host_line(line: str, group: str, inventory: InventoryData, origin: tuple) -> None:
    try:
        words = shlex.split(line, comments=True)
    except ValueError as exc:
        raise _error(f"cannot split host line {line!r} as a shell would: {exc}", origin,
                     "close the quote") from None
    pattern = words[0]
    if pattern.endswith(":"):
        raise _error(f"host pattern {pattern!r} ends in ':', which is kept for a port", origin,
                     "write host:port, or remove the ':'")
    names, port = host_pattern(pattern, origin)
    host_vars = {}
    for word in words[1:]:
        if "=" not in word:
            raise _error(f"expected key=value after the host, got {word!r}", origin,
                         "write host vars as key=value, quoted as for a shell if the value holds spaces")
        var, text = word.split("=", 1)
        host_vars[var] = ini_value(text, origin)
    for name in names:
        inventory.add_host(name, group, port, origin)
        for var, value in host_vars.items():
            inventory.set_var(name, var, value, origin)


def _read_var_line(line: str, origin: tuple) -> tuple[str, object]:
    if "=" not in line:
        raise _error(f"expected key=value, got {line!r}", origin,
                     "a [group:vars] section holds one key=value a line")
    var, text = (part.strip() for part in line.split("=", 1))
    return var, ini_value(text, origin)


def ini_value(text: str, origin: tuple):
    """An INI value as Ansible reads it: a Python literal where the text is one, else the text."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    except Exception as exc:  # e.g. TypeError for `{[1]: 2}`, RecursionError for deep nesting; Ansible fails too
        raise _error(f"cannot read the value {text!r}: {type(exc).__name__}: {exc}", origin,
                     "quote it to keep it as text") from None
    return _plain(value)


def _plain(value):
    """Ansible's reading of what literal_eval made: tuples and sets become lists, bytes text; `...` and complex
    numbers go back to text."""
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if value is ...:
        return "..."
    if isinstance(value, complex):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


def _error(message: str, origin: tuple, hint: str) -> InventoryError:
    return InventoryError(message, file=origin[0], line=origin[1], hint=hint)
