"""Ansible's host patterns, as `--limit` reads them (ansible-core lib/ansible/inventory/manager.py).

A pattern is a list, comma-separated (or colon-separated when it holds no comma): `gpu01,gpu02`, `rack_a:!gpu02`,
`rack_a:&fast`. Each item names a host or a group (its hosts and its children's); `*`, `?` and `[...]` are shell
globs, `~REGEX` a Python regular expression matched at the start of the name, and `group[0]`, `group[-1]`,
`group[0:3]` (inclusive), `group[2:]` pick hosts of what the item matched. Items without a prefix are added in
order, then `&item` keeps only hosts it matches too, then `!item` removes the hosts it matches; with only `&`/`!`
items, they apply to `all`. `@FILE` reads more items from a file, one a line.

A group's hosts are in Ansible's order (inventory/group.py get_hosts), which subscripts count in: the group's own
hosts as listed, then its children's, level by level, each host once. Not read: the implicit `localhost` of an
inventory that does not list it.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from pathlib import Path
from typing import Callable, Protocol

from tritonfleet.errors import TritonfleetError

# `group[1]`, `group[-1]`, `group[0:3]`, `group[2:]` (and `[0-3]`, which Ansible still reads as `[0:3]`)
_SUBSCRIPT = re.compile(r"^(.+)\[(?:(-?[0-9]+)|([0-9]+)[:-]([0-9]*))\]$")
# without commas, `:` separates items, except inside `[...]`: Ansible's split_host_pattern
_COLON_ITEM = re.compile(r"(?:[^\s:\[\]]|\[[^\]]*\])+")
_HOST_PORT = re.compile(r"^((?:[^:\[\]]|\[[^\]]*\])*):([0-9]+)$")
_HOST_NAME = re.compile(r"^(?:[\w-]|\[[^\]]*\])+(?:\.(?:[\w-]|\[[^\]]*\])+)*$")
_GLOB_OR_REGEX = (".", "?", "*", "[")
UNGROUPED = "ungrouped"


class PatternError(TritonfleetError):
    """A host pattern that cannot be read (a bad regex, a subscript past the end, an unreadable @file)."""


class GroupIndex(Protocol):
    hosts: dict  # its own host names (keys), in the order listed
    children: list  # its child groups' names, in the order listed


class HostIndex(Protocol):
    """What patterns need of an inventory: host names in inventory order, groups by name."""

    host_names: list[str]
    groups: dict[str, GroupIndex]


def split_pattern(pattern: str) -> list[str]:
    """The items of a pattern. Without a comma, a lone address (`fe80::1`, `gpu01:22`) is one item, as Ansible's
    parse_address reads it; anything else splits at `:` outside brackets."""
    if "," in pattern:
        items = pattern.split(",")
    elif _is_address(pattern.strip()):
        items = [pattern]
    else:
        items = _COLON_ITEM.findall(pattern)
        dropped = _COLON_ITEM.sub("", pattern).replace(":", "").strip()
        if dropped:  # Ansible drops an unclosed bracket silently: `~[` became `~`, which matches every host
            raise PatternError(f"host pattern {pattern!r} has an unclosed or stray bracket ({dropped!r})",
                               hint="close the bracket (`group[0:3]`, `~gpu0[1-4]`), or quote the pattern")
    return [item.strip() for item in items if item.strip()]


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        match = _HOST_PORT.match(text)
        return bool(match and _HOST_NAME.match(match[1]))


def _expand_files(items: list[str]) -> list[str]:
    """`@FILE` items replaced by the lines of FILE (Ansible's retry files and limit lists)."""
    expanded = []
    for item in items:
        if not item.startswith("@"):
            expanded.append(item)
            continue
        path = Path(item[1:])
        try:
            expanded += [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise PatternError(f"cannot read the limit file: {exc.strerror}", file=str(path),
                               hint="`--limit @FILE` names a file of host names, one a line") from None
    return expanded


def match(pattern: str, inventory: HostIndex, warn: Callable[[str], None] = lambda msg: None) -> list[str]:
    """The host names `pattern` selects, each once, in Ansible's order (InventoryManager._evaluate_patterns). An item
    that matches nothing is ignored with a warning, as Ansible's default (HOST_PATTERN_MISMATCH = warning)."""
    items = _expand_files(split_pattern(pattern))
    plain = [i for i in items if i[0] not in "&!"] or ["all"]
    ordered = plain + [i for i in items if i[0] == "&"] + [i for i in items if i[0] == "!"]
    known = set(inventory.host_names)
    hosts: list[str] = []
    for item in ordered:
        if item in known:
            hosts.append(item)
            continue
        matched = _match_item(item, inventory, warn)
        if item[0] == "!":
            removed = set(matched)
            hosts = [h for h in hosts if h not in removed]
        elif item[0] == "&":
            kept = set(matched)
            hosts = [h for h in hosts if h in kept]
        else:
            hosts += matched
    return list(dict.fromkeys(hosts))


def _match_item(item: str, inventory: HostIndex, warn) -> list[str]:
    """Hosts one item matches, its `&`/`!` ignored, its subscript applied as Ansible's _apply_subscript: `[N]` one
    host (an error past the end), `[A:B]` a slice, empty past the end."""
    expr, subscript = _split_subscript(item[1:] if item[0] in "&!" else item)
    hosts = _enumerate(expr, inventory, warn)
    if not hosts or subscript is None:
        return hosts
    start, end = subscript
    if end:
        return hosts[start:(len(hosts) if end == -1 else end + 1)]
    try:
        return [hosts[start]]
    except IndexError:
        raise PatternError(f"no hosts matched the subscripted pattern '{item}': '{expr}' matches {len(hosts)} "
                           "host(s)", hint="subscripts count from 0; [-1] is the last host") from None


def _split_subscript(expr: str) -> tuple[str, tuple | None]:
    """`group[0:3]` -> ('group', (0, 3)); `group[2:]` -> ('group', (2, -1)); `group[1]` -> ('group', (1, None));
    a regex has no subscript."""
    found = None if expr.startswith("~") else _SUBSCRIPT.match(expr)
    if not found:
        return expr, None
    name, index, start, end = found.groups()
    if index is not None:
        return name, (int(index), None)
    return name, (int(start), int(end) if end else -1)


def _enumerate(expr: str, inventory: HostIndex, warn) -> list[str]:
    """Hosts of the groups `expr` matches; then, if none matched or it is a glob or regex, the hosts it matches."""
    groups = _matching(expr, _group_names(inventory))
    hosts = [h for g in groups for h in _group_hosts(inventory, g)]
    if not groups or expr.startswith("~") or any(c in expr for c in _GLOB_OR_REGEX):
        hosts += _matching(expr, inventory.host_names)
    if not hosts and not groups and expr != "all":
        warn(f"could not match supplied host pattern, ignoring: {expr}")
    return hosts


def _matching(expr: str, names: list[str]) -> list[str]:
    try:
        regex = re.compile(expr[1:] if expr.startswith("~") else fnmatch.translate(expr))
    except re.error as exc:
        raise PatternError(f"invalid host pattern '{expr}': {exc}",
                           hint="after `~` comes a Python regular expression, e.g. ~gpu0[1-4]") from None
    return [name for name in names if regex.match(name)]


def _group_names(inventory: HostIndex) -> list[str]:
    """Ansible's groups, its built-in `ungrouped` included."""
    names = list(inventory.groups)
    return names if UNGROUPED in names else names + [UNGROUPED]


def _group_hosts(inventory: HostIndex, group: str) -> list[str]:
    """The group's own hosts, then its children's, breadth-first, each host once (Group._get_hosts). `ungrouped`,
    when the inventory does not define it, is the hosts in no group but `all`."""
    if group not in inventory.groups:
        grouped = {h for name, g in inventory.groups.items() if name != "all" for h in g.hosts}
        return [h for h in inventory.host_names if h not in grouped]
    walk, hosts = [group], {}
    for name in walk:
        hosts.update(dict.fromkeys(inventory.groups[name].hosts))
        walk += [child for child in inventory.groups[name].children if child not in walk]
    return list(hosts)
