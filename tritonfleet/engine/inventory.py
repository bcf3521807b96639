"""Ansible's YAML inventory format: groups, hosts, vars, group_vars/ and host_vars/ folders.

Variable precedence follows Ansible's (lowest first):
  1. `all.vars` in the inventory file
  2. `group_vars/all`
  3. `vars` of other groups in the inventory file, by group depth, then `ansible_group_priority`, then name
  4. `group_vars/<group>`, in the same group order
  5. the host's own vars in the inventory file
  6. `host_vars/<host>`
A child group overrides its parent; between sibling groups the one whose name sorts last wins, unless
`ansible_group_priority` says otherwise (higher wins). Values may use Jinja2 with `inventory_dir`,
`inventory_hostname`, `group_names` and any other var of the host.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from tritonfleet import secrets
from tritonfleet.errors import InventoryError
from tritonfleet.paths import REPO_ROOT
from tritonfleet.yamlfile import line_of, load_yaml

GROUP_KEYS = ("hosts", "vars", "children")
_JINJA = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


@dataclass
class Group:
    name: str
    vars: dict = field(default_factory=dict)
    file_vars: dict = field(default_factory=dict)  # from group_vars/
    parents: set = field(default_factory=set)
    hosts: list = field(default_factory=list)  # names, in inventory order
    children: list = field(default_factory=list)


@dataclass
class Host:
    """A host as the engine needs it: connection settings and its merged, rendered vars."""

    name: str
    vars: dict
    groups: tuple

    @property
    def address(self) -> str:
        return str(self.vars.get("ansible_host", self.name))

    @property
    def port(self) -> int:
        return int(self.vars.get("ansible_port", 22))

    @property
    def user(self) -> str:
        return str(self.vars.get("ansible_user", "root"))

    @property
    def key_file(self) -> str | None:
        key = self.vars.get("ansible_ssh_private_key_file")
        return str(Path(key).expanduser()) if key else None

    @property
    def ssh_args(self) -> list[str]:
        """Extra OpenSSH arguments, as Ansible takes them (`ansible_ssh_common_args` + `ansible_ssh_extra_args`)."""
        args = []
        for var in ("ansible_ssh_common_args", "ansible_ssh_extra_args"):
            if self.vars.get(var):
                args += shlex.split(str(self.vars[var]))
        return args

    def ssh_option(self, name: str) -> str | None:
        """The value of `-o Name=value` in the ssh args (case-insensitive name), as OpenSSH would read it."""
        args = self.ssh_args
        for i, arg in enumerate(args):
            value = None
            if arg == "-o" and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith("-o") and len(arg) > 2:
                value = arg[2:]
            if value:
                key, _, val = value.replace(" ", "=", 1).partition("=")
                if key.lower() == name.lower():
                    return val
        return None

    @property
    def known_hosts_file(self) -> str:
        return str(Path(self.ssh_option("UserKnownHostsFile") or "~/.ssh/known_hosts").expanduser())


class Inventory:
    def __init__(self, path: Path, groups: dict[str, Group], host_inline_vars: dict[str, dict],
                 host_lines: dict[str, int]):
        self.path = path
        self.groups = groups
        self._host_inline_vars = host_inline_vars
        self._host_lines = host_lines
        self._hosts: dict[str, Host] = {}

    @property
    def host_names(self) -> list[str]:
        return list(self._host_inline_vars)

    def host(self, name: str) -> Host:
        if name not in self._host_inline_vars:
            raise InventoryError(f"unknown host '{name}'", file=str(self.path),
                                 hint=f"known hosts: {', '.join(self.host_names) or '(none)'}")
        if name not in self._hosts:
            self._hosts[name] = self._resolve(name)
            # secret vars (tritonfleet/secrets.py) are redacted from every output from here on
            secrets.register(secrets.secret_values(self._hosts[name].vars))
        return self._hosts[name]

    def group_hosts(self, group: str) -> list[str]:
        """Host names of a group and its descendants, in inventory order."""
        if group not in self.groups:
            raise InventoryError(f"unknown group '{group}'", file=str(self.path),
                                 hint=f"known groups: {', '.join(sorted(self.groups))}")
        names, todo, seen = set(), [group], set()
        while todo:
            g = self.groups[todo.pop()]
            if g.name in seen:
                continue
            seen.add(g.name)
            names.update(g.hosts)
            todo.extend(g.children)
        return [h for h in self.host_names if h in names]

    def select(self, host: str | None = None, group: str | None = None) -> list[Host]:
        """Hosts named by `--host` (comma-separated) or `--group`; unknown names are an error naming the known ones."""
        if host and group:
            raise InventoryError("give --host or --group, not both")
        if host:
            return [self.host(h.strip()) for h in host.split(",") if h.strip()]
        names = self.group_hosts(group or "all")
        if not names:
            raise InventoryError(f"group '{group or 'all'}' has no hosts", file=str(self.path),
                                 hint="add hosts to it, or pick another with --group/--host")
        return [self.host(n) for n in names]

    def _ancestors(self, group: str) -> dict[str, int]:
        """Each ancestor group (and the group itself) with its depth below `all`."""
        depth: dict[str, int] = {}

        def walk(name: str) -> int:
            if name not in depth:
                depth[name] = 0  # guards against cycles while walking
                parents = self.groups[name].parents
                depth[name] = 0 if name == "all" else 1 + max((walk(p) for p in parents), default=0)
            return depth[name]

        found, todo = {}, [group]
        while todo:
            name = todo.pop()
            if name not in found:
                found[name] = walk(name)
                todo.extend(self.groups[name].parents)
        return found

    def _resolve(self, name: str) -> Host:
        member_of = [g for g in self.groups.values() if name in g.hosts]
        depths: dict[str, int] = {"all": 0}
        for g in member_of:
            depths.update(self._ancestors(g.name))

        def order(g: str):
            return (depths[g], int(self.groups[g].vars.get("ansible_group_priority", 1)), g)

        others = sorted((g for g in depths if g != "all"), key=order)
        merged: dict = {}
        merged.update(self.groups["all"].vars)
        merged.update(self.groups["all"].file_vars)
        for g in others:
            merged.update(self.groups[g].vars)
        for g in others:
            merged.update(self.groups[g].file_vars)
        merged.update(self._host_inline_vars[name])
        merged.update(_read_vars_dir(self.path.parent / "host_vars", name))
        group_names = sorted(others)
        merged.setdefault("inventory_hostname", name)
        merged.setdefault("inventory_dir", str(self.path.parent.resolve()))
        merged.setdefault("group_names", group_names)
        return Host(name=name, vars=_render_vars(merged, self.path, self._host_lines.get(name)),
                    groups=tuple(group_names))


def _render_value(value, context: dict):
    """Render Jinja2 in a var's value, inside lists and mappings too."""
    if isinstance(value, str) and ("{{" in value or "{%" in value):
        return _JINJA.from_string(value).render(context)
    if isinstance(value, list):
        return [_render_value(v, context) for v in value]
    if isinstance(value, dict):
        return {k: _render_value(v, context) for k, v in value.items()}
    return value


def _render_vars(values: dict, path: Path, line: int | None) -> dict:
    """Render Jinja2 in var values against the host's own vars (a few passes for vars that refer to vars)."""
    rendered = dict(values)
    for _ in range(5):
        changed = False
        for key, value in rendered.items():
            try:
                new = _render_value(value, rendered)
            except jinja2.TemplateError as exc:
                raise InventoryError(f"var '{key}': {exc}", file=str(path), line=line,
                                     hint="define the variable it uses, or fix the Jinja2 expression") from None
            if new != value:
                rendered[key], changed = new, True
        if not changed:
            break
    return rendered


def _read_vars_dir(folder: Path, name: str) -> dict:
    """Vars from `folder/name.yml|.yaml|name` or every YAML file in `folder/name/`, as Ansible reads them."""
    candidates = [folder / f"{name}{ext}" for ext in (".yml", ".yaml", ".json", "")]
    files = [p for p in candidates if p.is_file()]
    if (folder / name).is_dir():
        files += sorted(p for p in (folder / name).iterdir() if p.suffix in (".yml", ".yaml", ".json"))
    merged: dict = {}
    for path in files:
        data = load_yaml(path, InventoryError)
        if data is None:
            continue
        if not isinstance(data, dict):
            raise InventoryError("vars file must hold a mapping of variable names to values",
                                 file=str(path), line=line_of(data) or 1)
        merged.update(data)
    return merged


def load_inventory(path: str | Path) -> Inventory:
    """Read an inventory file (YAML, Ansible's format) with the group_vars/ and host_vars/ beside it."""
    path = Path(path)
    data = load_yaml(path, InventoryError)
    if data is None:
        raise InventoryError("inventory is empty", file=str(path),
                             hint="add at least `all: {hosts: {NAME: {ansible_host: ADDRESS}}}`")
    if not isinstance(data, dict):
        raise InventoryError("inventory must be a mapping of group names", file=str(path), line=line_of(data) or 1,
                             hint="start with `all:` and put `hosts:`, `vars:`, `children:` under it")
    groups: dict[str, Group] = {"all": Group("all")}
    inline: dict[str, dict] = {}
    host_lines: dict[str, int] = {}

    def where(node, key=None):
        return {"file": str(path), "line": line_of(node, key)}

    def add_group(name, body, parent, node, key):
        if not isinstance(name, str) or not name:
            raise InventoryError(f"group name must be a string, got {name!r}", **where(node, key))
        group = groups.setdefault(name, Group(name))
        if parent:
            group.parents.add(parent)
            if name not in groups[parent].children:
                groups[parent].children.append(name)
        if body is None:
            return
        if not isinstance(body, dict):
            raise InventoryError(f"group '{name}' must be a mapping with hosts/vars/children",
                                 **where(node, key), hint="write `hosts:`, `vars:` or `children:` under it")
        for k in body:
            if k not in GROUP_KEYS:
                raise InventoryError(f"group '{name}' has unknown key '{k}'", **where(body, k),
                                     hint=f"a group holds only {', '.join(GROUP_KEYS)}")
        gvars = body.get("vars") or {}
        if not isinstance(gvars, dict):
            raise InventoryError(f"vars of group '{name}' must be a mapping", **where(body, "vars"))
        group.vars.update(gvars)
        hosts = body.get("hosts") or {}
        if not isinstance(hosts, dict):
            raise InventoryError(f"hosts of group '{name}' must be a mapping of host names",
                                 **where(body, "hosts"), hint="write `hosts: {gpu01: {ansible_host: 10.0.0.1}}`")
        for host, hvars in hosts.items():
            if hvars is not None and not isinstance(hvars, dict):
                raise InventoryError(f"vars of host '{host}' must be a mapping", **where(hosts, host))
            host = str(host)
            if host not in inline:
                inline[host], host_lines[host] = {}, line_of(hosts, host)
            inline[host].update(hvars or {})
            if host not in group.hosts:
                group.hosts.append(host)
        children = body.get("children") or {}
        if not isinstance(children, dict):
            raise InventoryError(f"children of group '{name}' must be a mapping of group names",
                                 **where(body, "children"))
        for child, child_body in children.items():
            add_group(child, child_body, name, children, child)

    for name, body in data.items():
        add_group(name, body, None if name == "all" else "all", data, name)
    for group in groups.values():
        group.file_vars = _read_vars_dir(path.parent / "group_vars", group.name)
    for host in inline:
        if host in groups:
            raise InventoryError(f"'{host}' is both a host and a group", file=str(path), line=host_lines[host],
                                 hint="rename one of them")
    all_hosts = groups["all"]
    for host in inline:
        if not any(host in g.hosts for g in groups.values() if g.name != "all") and host not in all_hosts.hosts:
            all_hosts.hosts.append(host)
    return Inventory(path, groups, inline, host_lines)


def lab_hosts(inventory: Inventory) -> list[Host]:
    """The hosts of group `lab`, which `invoke lab.up` can create on this machine."""
    return inventory.select(group="lab")


DEFAULT_INVENTORY = REPO_ROOT / "inventory" / "hosts.yml"
