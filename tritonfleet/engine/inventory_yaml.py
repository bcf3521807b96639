"""Ansible's YAML inventory format (`all` / `children` / `hosts` / `vars`), read as ansible-core's yaml plugin reads
it: sections in the order written, a section given as one text is that one name, host patterns expanded
(engine/hostrange.py). Stricter than Ansible where it would only warn and skip: a group that is not a mapping and
an unknown key in a group are refused, with file and line.
"""

from __future__ import annotations

import re

from tritonfleet.engine import hostrange, varspec
from tritonfleet.engine.inventory_data import InventoryData
from tritonfleet.errors import InventoryError
from tritonfleet.yamlfile import line_of

GROUP_KEYS = ("hosts", "vars", "children")
# Host names and SSH words: no whitespace or control characters, no leading '-' (ssh would read an option).
SSH_WORD = re.compile(r"(?!-)[^\s\x00-\x1f\x7f]+")


def read_yaml_inventory(data: dict, file: str, inventory: InventoryData) -> None:
    for name, body in data.items():
        _read_group(name, body, inventory, file, (file, line_of(data, name)))


def _read_group(name, body, inventory: InventoryData, file: str, origin: tuple) -> str:
    inventory.add_group(name, origin)
    if body is None:
        return name
    if not isinstance(body, dict):
        raise InventoryError(f"group '{name}' must be a mapping with hosts/vars/children", file=file,
                             line=origin[1], hint="write `hosts:`, `vars:` or `children:` under it")
    for key in body:
        if key not in GROUP_KEYS:
            raise InventoryError(f"group '{name}' has unknown key '{key}'", file=file, line=line_of(body, key),
                                 hint=f"a group holds only {', '.join(GROUP_KEYS)}")
    for key, section in body.items():
        line = line_of(body, key)
        if isinstance(section, str):
            section = {section: None}  # `hosts: gpu01` is one host, as in Ansible
        if section is None:
            continue
        if not isinstance(section, dict):
            raise InventoryError(f"{key} of group '{name}' must be a mapping, not {varspec.yaml_kind(section)}",
                                 file=file, line=line,
                                 hint="write `hosts: {gpu01: {ansible_host: 10.0.0.1}}`" if key == "hosts" else None)
        for item, value in section.items():
            item_origin = (file, line_of(section, item) or line)
            if key == "vars":
                inventory.set_var(name, item, value, item_origin)
            elif key == "children":
                inventory.add_child(name, _read_group(item, value, inventory, file, item_origin), item_origin)
            else:
                _read_hosts(item, value, name, inventory, item_origin)
    return name


def _read_hosts(pattern, host_vars, group: str, inventory: InventoryData, origin: tuple) -> None:
    names, port = host_pattern(pattern, origin)
    if host_vars and not isinstance(host_vars, dict):  # an empty value is no vars, as in Ansible
        raise InventoryError(f"vars of host '{pattern}' must be a mapping", file=origin[0], line=origin[1])
    for name in names:
        inventory.add_host(name, group, port, origin)
        for var, value in (host_vars or {}).items():
            inventory.set_var(name, var, value, (origin[0], line_of(host_vars, var) or origin[1]))


def host_pattern(pattern, origin: tuple) -> tuple[list[str], int | None]:
    """The host names and port of a host pattern, each name one tritonfleet can reach; refused with why and what
    to write otherwise."""
    where = {"file": origin[0], "line": origin[1]}
    if not isinstance(pattern, str):
        raise InventoryError(f"host name {pattern!r} is not text: YAML read it as {varspec.yaml_kind(pattern)} "
                             "(Ansible refuses it too)", **where,
                             hint="quote it: write the name as text, e.g. \"10.10\": {}")
    try:
        names, port = hostrange.expand(pattern)
    except ValueError as exc:
        raise InventoryError(f"host pattern {pattern!r}: {exc}", **where,
                             hint="write a range as [01:16], [a:f] or [01:16:2] (every 2nd)") from None
    for name in names:
        check_host_name(name, origin)
    return names, port


def check_host_name(name, origin: tuple) -> None:
    if not isinstance(name, str) or not SSH_WORD.fullmatch(name):
        raise InventoryError(f"host name {name!r} is empty, holds spaces or control characters, or starts "
                             "with '-'", file=origin[0], line=origin[1],
                             hint="name the host with letters, digits, '.', '_' and '-'")
