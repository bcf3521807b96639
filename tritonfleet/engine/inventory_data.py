"""Groups and hosts as the inventory sources name them, built by Ansible's rules (ansible-core inventory/data.py),
so that every source (YAML, INI, a script, several at once) gives the groups and vars Ansible gives:

- groups and hosts keep the order they are first named in; a host is in a group once;
- a var given to a name that is both a group and a host goes to the group (Ansible looks for a group first);
- `ansible_group_priority` among a group's vars is the group's priority, not a var;
- after the last source (reconcile): a group with no parent is a child of `all`, a host in no group but `all` is
  in `ungrouped`, and a host in another group is no longer in `ungrouped`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tritonfleet.engine import varspec
from tritonfleet.errors import InventoryError
from tritonfleet.yamlfile import line_of

GROUP_PRIORITY = varspec.whole_number()


@dataclass
class Layer:
    """Vars set in one place of the inventory, each with the file and line that set it (for errors)."""

    values: dict = field(default_factory=dict)
    origins: dict = field(default_factory=dict)  # var -> (file, line)

    def set(self, var, value, origin: tuple) -> None:
        if not isinstance(var, str):
            raise InventoryError(f"var name {var!r} is not text: YAML read it as {varspec.yaml_kind(var)}",
                                 file=origin[0], line=origin[1], hint="quote it, or rename the var")
        self.values[var] = value
        self.origins[var] = origin

    def add(self, mapping: dict, file: str) -> None:
        """The vars of a YAML mapping, each with its line."""
        for var, value in mapping.items():
            self.set(var, value, (file, line_of(mapping, var)))

    def add_layer(self, other: Layer) -> None:
        self.values.update(other.values)
        self.origins.update(other.origins)


@dataclass
class Group:
    name: str
    vars: Layer = field(default_factory=Layer)
    priority: int = 1  # ansible_group_priority
    parents: list = field(default_factory=list)
    children: list = field(default_factory=list)
    hosts: dict = field(default_factory=dict)  # names (keys only), in the order added: membership in O(1)


@dataclass
class HostEntry:
    """A host as the sources name it: its own vars and where it was first named (Ansible's inventory_file)."""

    name: str
    file: str
    line: int | None
    vars: Layer = field(default_factory=Layer)
    groups: list = field(default_factory=list)  # the groups it was added to, not their ancestors


class InventoryData:
    def __init__(self):
        self.groups: dict[str, Group] = {"all": Group("all"), "ungrouped": Group("ungrouped")}
        self.hosts: dict[str, HostEntry] = {}
        self.add_child("all", "ungrouped", (None, None))

    def add_group(self, name, origin: tuple) -> str:
        if not isinstance(name, str) or not name:
            raise InventoryError(f"group name must be non-empty text, got {name!r}", file=origin[0], line=origin[1])
        self.groups.setdefault(name, Group(name))
        return name

    def add_host(self, name: str, group: str | None, port: int | None, origin: tuple) -> None:
        """A host, in `group` if given; `port` (from `host:port`) is its ansible_port when it is new, as in Ansible."""
        host = self.hosts.get(name)
        if host is None:
            host = self.hosts[name] = HostEntry(name, *origin)
            if port:
                host.vars.set("ansible_port", port, origin)
        if group is not None and name not in self.groups[group].hosts:
            self.groups[group].hosts[name] = None
            host.groups.append(group)

    def set_var(self, entity: str, var, value, origin: tuple) -> None:
        """Set a var of a group or host: the group when the name is both, as Ansible does."""
        group = self.groups.get(entity)
        if group is None:
            self.hosts[entity].vars.set(var, value, origin)
        elif var == "ansible_group_priority":
            group.priority = _group_priority(entity, value, origin)
        else:
            group.vars.set(var, value, origin)

    def add_child(self, parent: str, child: str, origin: tuple) -> None:
        """Make group `child` a child of group `parent`; one that would be its own descendant is refused."""
        if child in self.groups[parent].children:
            return
        if child == parent or child in self.ancestors(parent):
            raise InventoryError(f"adding group '{child}' as a child of '{parent}' creates a recursive dependency "
                                 "loop", file=origin[0], line=origin[1],
                                 hint=f"a group cannot be its own descendant: remove '{child}' from the children of "
                                      f"'{parent}' or the other way round")
        self.groups[parent].children.append(child)
        self.groups[child].parents.append(parent)

    def ancestors(self, group: str) -> set[str]:
        found, todo = set(), list(self.groups[group].parents)
        while todo:
            name = todo.pop()
            if name not in found:
                found.add(name)
                todo.extend(self.groups[name].parents)
        return found

    def reconcile(self) -> None:
        """Ansible's last step after reading every source (InventoryData.reconcile_inventory)."""
        for group in list(self.groups.values()):
            if group.name != "all" and not group.parents:
                self.add_child("all", group.name, (None, None))
        ungrouped = self.groups["ungrouped"]
        for host in self.hosts.values():
            if any(g not in ("all", "ungrouped") for g in host.groups):
                if host.name in ungrouped.hosts:
                    del ungrouped.hosts[host.name]
                    host.groups.remove("ungrouped")
            elif "ungrouped" not in host.groups:
                self.add_host(host.name, "ungrouped", None, (None, None))


def _group_priority(group: str, value, origin: tuple) -> int:
    try:
        return GROUP_PRIORITY.read(value)
    except ValueError as exc:
        raise InventoryError(f"group {group}: ansible_group_priority is {value!r}: {exc}", file=origin[0],
                             line=origin[1],
                             hint=f"ansible_group_priority must be {GROUP_PRIORITY.allowed} (higher wins)") from None
