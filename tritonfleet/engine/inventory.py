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
`inventory_hostname`, `group_names` and any other var of the host; each var is rendered after the vars it
uses. Then the connection vars (CONNECTION_VARS) are checked and read into their types (engine/varspec.py).

Not read yet (each named as such when given): INI inventories, inventory directories, inventory plugin
configs, Ansible Vault, host ranges (`gpu[01:08]`) and `host:port` names.
"""

from __future__ import annotations

import functools
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import jinja2.meta

from tritonfleet import secrets
from tritonfleet.engine import varspec
from tritonfleet.errors import InventoryError
from tritonfleet.paths import REPO_ROOT
from tritonfleet.yamlfile import line_of, load_yaml

GROUP_KEYS = ("hosts", "vars", "children")
VARS_FILE_EXTENSIONS = ("", ".yml", ".yaml", ".json")  # Ansible's, in the order it looks for them
HOST_KEY_POLICIES = ("strict", "accept-new")
KNOWN_HOSTS_SHOWN = 20
_JINJA = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)

# Host names and SSH words: no whitespace or control characters, no leading '-' (ssh would read an option).
_SSH_WORD = re.compile(r"(?!-)[^\s\x00-\x1f\x7f]+")
_ADDRESS = varspec.text(_SSH_WORD, "a host name or IP address (no spaces, not starting with '-')",
                        "not a host name or address")
_HOST_RANGE = re.compile(r"\[[^\]]*:[^\]]*\]")
_HOST_PORT = re.compile(r"[^:]+:[0-9]+")
_INI_LINE = re.compile(r"\[[^\]\s]+\]\s*|[^\s#;=:\[]+(\s+[A-Za-z_]\w*=\S*)+\s*")

# The vars the engine reads (Host below, engine/connection.py), each with its type; Triton's are in
# triton/layout.py VAR_TYPES.
CONNECTION_VARS = {
    "ansible_host": _ADDRESS,
    "ansible_port": varspec.PORT,
    "ansible_user": varspec.text(_SSH_WORD, "a user name (no spaces, not starting with '-')",
                                 "not a user name"),
    "ansible_ssh_private_key_file": varspec.optional(varspec.text(allowed="a file on this machine")),
    "ansible_ssh_common_args": varspec.optional(varspec.SHELL_WORDS),
    "ansible_ssh_extra_args": varspec.optional(varspec.SHELL_WORDS),
    "ansible_become": varspec.BOOLEAN,
    "ansible_become_user": varspec.optional(varspec.text(_SSH_WORD, "a user name (no spaces)", "not a user name")),
    "ansible_become_password": varspec.optional(varspec.text()),
    "tritonfleet_become_password_env": varspec.optional(varspec.text(
        re.compile(r"[A-Za-z_][A-Za-z0-9_]*"), "the name of an environment variable", "not a variable name")),
    "tritonfleet_host_key_policy": varspec.optional(varspec.choice(*HOST_KEY_POLICIES)),
    "tritonfleet_secret_vars": varspec.text_list(varspec.text(allowed="var names"), commas=True),
}
# Read from a group's inline vars only, as Ansible does (not from group_vars/), and not a var of its hosts.
GROUP_PRIORITY = varspec.whole_number()


@dataclass
class Layer:
    """Vars set in one place of the inventory, each with the file and line that set it (for errors)."""

    values: dict = field(default_factory=dict)
    origins: dict = field(default_factory=dict)  # var -> (file, line)

    def add(self, mapping: dict, file: str, skip: tuple = ()) -> None:
        for var, value in mapping.items():
            if var in skip:
                continue
            if not isinstance(var, str):
                raise InventoryError(f"var name {var!r} is not text: YAML read it as {varspec.yaml_kind(var)}",
                                     file=file, line=line_of(mapping, var), hint="quote it, or rename the var")
            self.values[var] = value
            self.origins[var] = (file, line_of(mapping, var))

    def add_layer(self, other: Layer) -> None:
        self.values.update(other.values)
        self.origins.update(other.origins)


@dataclass
class Group:
    name: str
    vars: Layer = field(default_factory=Layer)
    file_vars: Layer = field(default_factory=Layer)  # from group_vars/
    priority: int = 1  # ansible_group_priority
    parents: set = field(default_factory=set)
    hosts: dict = field(default_factory=dict)  # names (keys only), in inventory order: membership in O(1)
    children: list = field(default_factory=list)


@dataclass
class Host:
    """A host as the engine needs it: connection settings and its merged, rendered, checked vars."""

    name: str
    vars: dict
    groups: tuple
    origins: dict = field(default_factory=dict)  # var -> (file, line) that set it, for errors

    @property
    def address(self) -> str:
        return self.vars.get("ansible_host", self.name)

    @property
    def port(self) -> int:
        return self.vars.get("ansible_port", 22)

    @property
    def user(self) -> str:
        return self.vars.get("ansible_user", "root")

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
                args += shlex.split(self.vars[var])
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
    def __init__(self, path: Path, groups: dict[str, Group], host_inline_vars: dict[str, Layer],
                 host_lines: dict[str, int]):
        self.path = path
        self.groups = groups
        self._host_inline_vars = host_inline_vars
        self._host_lines = host_lines
        self._hosts: dict[str, Host] = {}

    @property
    def host_names(self) -> list[str]:
        return list(self._host_inline_vars)

    def _known_hosts_hint(self) -> str:
        """The first host names, not all of them: an inventory may hold tens of thousands."""
        names = self.host_names
        more = f" and {len(names) - KNOWN_HOSTS_SHOWN} more" if len(names) > KNOWN_HOSTS_SHOWN else ""
        return f"known hosts: {', '.join(names[:KNOWN_HOSTS_SHOWN]) or '(none)'}{more}"

    def host(self, name: str) -> Host:
        if name not in self._host_inline_vars:
            raise InventoryError(f"unknown host '{name}'", file=str(self.path), hint=self._known_hosts_hint())
        if name not in self._hosts:
            self._hosts[name] = self._resolve(name)
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
        """Hosts named by `--host` (comma-separated) or `--group`; unknown names are an error naming the known ones.
        As Ansible reads a host pattern, a name given twice is one host (its first place counts) and empty
        items are skipped; a `--host` that names no host at all is an error, never the whole inventory."""
        if host is not None and group is not None:
            raise InventoryError("give --host or --group, not both")
        if host is not None:
            names = list(dict.fromkeys(h.strip() for h in host.split(",") if h.strip()))
            if not names:
                raise InventoryError(f"--host {host!r} names no host", file=str(self.path),
                                     hint=self._known_hosts_hint())
            return [self.host(n) for n in names]
        names = self.group_hosts("all" if group is None else group)
        if not names:
            raise InventoryError(f"group '{group or 'all'}' has no hosts", file=str(self.path),
                                 hint="add hosts to it, or pick another with --group/--host")
        return [self.host(n) for n in names]

    def _ancestors(self, group: str) -> dict[str, int]:
        """Each ancestor group (and the group itself) with its depth below `all` (groups have no cycles:
        load_inventory refuses them)."""
        depth: dict[str, int] = {}

        def walk(name: str) -> int:
            if name not in depth:
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
        depths: dict[str, int] = {"all": 0}
        for g in self.groups.values():
            if name in g.hosts:
                depths.update(self._ancestors(g.name))
        others = sorted((g for g in depths if g != "all"), key=lambda g: (depths[g], self.groups[g].priority, g))
        merged = Layer()
        for layer in (self.groups["all"].vars, self.groups["all"].file_vars,
                      *(self.groups[g].vars for g in others), *(self.groups[g].file_vars for g in others),
                      self._host_inline_vars[name], _vars_layer(self.path.parent / "host_vars", name)):
            merged.add_layer(layer)
        values = merged.values
        values.setdefault("inventory_hostname", name)
        values.setdefault("inventory_dir", str(self.path.parent.resolve()))
        values.setdefault("group_names", sorted(others))
        values = _render_vars(values, name, merged.origins)
        # secret vars (tritonfleet/secrets.py) are redacted from every output from here on, errors included
        secrets.register(secrets.secret_values(values))
        values = varspec.checked_vars(values, CONNECTION_VARS, name, merged.origins)
        return Host(name=name, vars=values, groups=tuple(sorted(others)), origins=merged.origins)


@functools.lru_cache(maxsize=1024)
def _template(source: str) -> tuple[jinja2.Template, frozenset]:
    """A Jinja2 text compiled once per run (hosts share their group's vars), with the names it uses."""
    return _JINJA.from_string(source), frozenset(jinja2.meta.find_undeclared_variables(_JINJA.parse(source)))


def _templates_in(value) -> list[str]:
    """The Jinja2 texts in a value, inside lists and mappings too."""
    if isinstance(value, str):
        return [value] if "{{" in value or "{%" in value else []
    if isinstance(value, list):
        return [t for v in value for t in _templates_in(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _templates_in(v)]
    return []


def _render_value(value, context: dict):
    """Render Jinja2 in a var's value, inside lists and mappings too."""
    if isinstance(value, str) and ("{{" in value or "{%" in value):
        return _template(value)[0].render(context)
    if isinstance(value, list):
        return [_render_value(v, context) for v in value]
    if isinstance(value, dict):
        return {k: _render_value(v, context) for k, v in value.items()}
    return value


def _render_vars(values: dict, host: str, origins: dict) -> dict:
    """Render Jinja2 in var values, each var after the vars it uses. A var that uses itself, directly or through
    others, is an error, as in Ansible; so is any error a Jinja2 expression raises (`{{ 1/0 }}`)."""
    rendered: dict = {}

    def fail(var: str, problem: str, hint: str = "define the variable it uses, or fix the Jinja2 expression"):
        file, line = origins.get(var, (None, None))
        return InventoryError(f"host {host}: var '{var}': {problem}", file=file, line=line, hint=hint)

    def render(var: str, using: tuple):
        if var in rendered:
            return rendered[var]
        if var in using:
            loop = " -> ".join(using[using.index(var):] + (var,))
            raise fail(var, f"recursive loop detected in template: {loop}",
                       "a var cannot use itself, directly or through other vars: give one of them a plain value")
        value = values[var]
        try:
            names = {n for source in _templates_in(value) for n in _template(source)[1]}
        except jinja2.TemplateSyntaxError as exc:
            raise fail(var, f"Jinja2 syntax error: {exc}") from None
        context = {n: render(n, using + (var,)) for n in names if n in values}
        try:
            rendered[var] = _render_value(value, context)
        except Exception as exc:  # an expression can raise whatever Python raises: ZeroDivisionError, TypeError
            detail = str(exc) if isinstance(exc, jinja2.TemplateError) else f"{type(exc).__name__}: {exc}"
            raise fail(var, detail) from None
        return rendered[var]

    return {var: render(var, ()) for var in values}


def _vars_files(folder: Path, name: str) -> list[Path]:
    """The files Ansible reads for `name` in group_vars/ or host_vars/ (dataloader.find_vars_files): the first
    of `name`, `name.yml`, `name.yaml`, `name.json` that exists; if that is a folder, its files."""
    for ext in VARS_FILE_EXTENSIONS:
        path = folder / f"{name}{ext}"
        if path.is_dir():
            return _vars_files_in(path)
        if path.exists():
            return [path]
    return []


def _vars_files_in(folder: Path) -> list[Path]:
    """Every file in a vars folder and its subfolders, sorted by name, with no extension or a YAML/JSON one;
    hidden files and backups (`~`) skipped, as Ansible does."""
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name.endswith("~"):
            continue
        if path.is_dir() and not path.suffix:
            found += _vars_files_in(path)
        elif path.is_file() and path.suffix in VARS_FILE_EXTENSIONS:
            found.append(path)
    return found


def _vars_layer(folder: Path, name: str) -> Layer:
    """The vars `folder` (group_vars/ or host_vars/) gives `name`, with their file and line."""
    layer = Layer()
    for path in _vars_files(folder, name):
        data = load_yaml(path, InventoryError)
        if data is None:
            continue
        if not isinstance(data, dict):
            raise InventoryError("vars file must hold a mapping of variable names to values",
                                 file=str(path), line=line_of(data) or 1)
        layer.add(data, str(path))
    return layer


def _refuse_host_name(name, where: dict) -> None:
    """A key under `hosts:` that is not a host name tritonfleet reads, refused with why and what to write."""
    if not isinstance(name, str):
        raise InventoryError(f"host name {name!r} is not text: YAML read it as {varspec.yaml_kind(name)} "
                             "(Ansible refuses it too)", **where,
                             hint="quote it: write the name as text, e.g. \"10.10\": {}")
    if not _SSH_WORD.fullmatch(name):
        raise InventoryError(f"host name {name!r} is empty, holds spaces or control characters, or starts "
                             "with '-'", **where, hint="name the host with letters, digits, '.', '_' and '-'")
    if _HOST_RANGE.search(name):
        raise InventoryError(f"host name {name!r} is a host range, which is not supported yet", **where,
                             hint="list the hosts one by one")
    if _HOST_PORT.fullmatch(name):
        raise InventoryError(f"host name {name!r} gives a port (host:port), which is not supported yet", **where,
                             hint="give the port as the host's var ansible_port")


def _refuse_ini(path: Path) -> None:
    """An INI inventory is named as such, not as a YAML error: its first line that only INI has."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return  # load_yaml says why
    converted = path.with_name(f"{path.stem}-converted.yml")
    for number, text in enumerate(lines, 1):
        if _INI_LINE.fullmatch(text):
            raise InventoryError(f"this is an INI inventory (line {number}: {text.strip()!r}), which is not "
                                 "supported yet", file=str(path), line=number,
                                 hint=f"convert it to YAML: `ansible-inventory -i {path} --list --yaml --export "
                                      f"> {converted}`")


def _read_inventory_file(path: Path):
    """The inventory's YAML. The other inventories Ansible reads (a directory, INI, a plugin config) are named
    as what they are and refused, not reported as a YAML error or a permission problem."""
    if path.is_dir():
        raise InventoryError("is a directory: inventory directories are not supported yet", file=str(path),
                             hint=f"name the YAML inventory file in it, e.g. --inventory {path}/hosts.yml")
    try:
        data = load_yaml(path, InventoryError)
    except InventoryError:
        _refuse_ini(path)
        raise
    if data is not None and not isinstance(data, dict):
        _refuse_ini(path)
    if isinstance(data, dict) and isinstance(data.get("plugin"), str):
        raise InventoryError(f"this is an inventory plugin config (plugin: {data['plugin']}), which is not "
                             "supported yet", file=str(path), line=line_of(data, "plugin"),
                             hint="write its hosts out as a YAML inventory (`ansible-inventory --list --yaml`)")
    return data


def _refuse_group_loop(groups: dict[str, Group], child: str, parent: str, where: dict) -> None:
    """A group that would become its own descendant (Ansible: "creates a recursive dependency loop")."""
    above, todo = set(), [parent]
    while todo:
        name = todo.pop()
        if name not in above:
            above.add(name)
            todo.extend(groups[name].parents)
    if child in above:
        raise InventoryError(f"adding group '{child}' as a child of '{parent}' creates a recursive dependency loop",
                             **where, hint=f"a group cannot be its own descendant: remove '{child}' from the "
                                           f"children of '{parent}' or the other way round")


def load_inventory(path: str | Path) -> Inventory:
    """Read an inventory file (YAML, Ansible's format) with the group_vars/ and host_vars/ beside it."""
    path = Path(path)
    data = _read_inventory_file(path)
    if data is None:
        raise InventoryError("inventory is empty", file=str(path),
                             hint="add at least `all: {hosts: {NAME: {ansible_host: ADDRESS}}}`")
    if not isinstance(data, dict):
        raise InventoryError("inventory must be a mapping of group names", file=str(path), line=line_of(data) or 1,
                             hint="start with `all:` and put `hosts:`, `vars:`, `children:` under it")
    groups: dict[str, Group] = {"all": Group("all")}
    inline: dict[str, Layer] = {}
    host_lines: dict[str, int] = {}

    def where(node, key=None):
        return {"file": str(path), "line": line_of(node, key)}

    def add_group(name, body, parent, node, key):
        if not isinstance(name, str) or not name:
            raise InventoryError(f"group name must be a string, got {name!r}", **where(node, key))
        group = groups.setdefault(name, Group(name))
        if parent:
            _refuse_group_loop(groups, name, parent, where(node, key))
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
        if "ansible_group_priority" in gvars:
            group.priority = _group_priority(name, gvars, path)
        group.vars.add(gvars, str(path), skip=("ansible_group_priority",))
        hosts = body.get("hosts") or {}
        if not isinstance(hosts, dict):
            raise InventoryError(f"hosts of group '{name}' must be a mapping of host names",
                                 **where(body, "hosts"), hint="write `hosts: {gpu01: {ansible_host: 10.0.0.1}}`")
        for host, hvars in hosts.items():
            _refuse_host_name(host, where(hosts, host))
            if hvars is not None and not isinstance(hvars, dict):
                raise InventoryError(f"vars of host '{host}' must be a mapping", **where(hosts, host))
            if host not in inline:
                inline[host], host_lines[host] = Layer(), line_of(hosts, host)
            inline[host].add(hvars or {}, str(path))
            group.hosts[host] = None
        children = body.get("children") or {}
        if not isinstance(children, dict):
            raise InventoryError(f"children of group '{name}' must be a mapping of group names",
                                 **where(body, "children"))
        for child, child_body in children.items():
            add_group(child, child_body, name, children, child)

    for name, body in data.items():
        add_group(name, body, None if name == "all" else "all", data, name)
    for group in groups.values():
        group.file_vars = _vars_layer(path.parent / "group_vars", group.name)
    for host in inline:
        if host in groups:
            raise InventoryError(f"'{host}' is both a host and a group", file=str(path), line=host_lines[host],
                                 hint="rename one of them")
    grouped = {host for g in groups.values() if g.name != "all" for host in g.hosts}
    for host in inline:
        if host not in grouped:
            groups["all"].hosts[host] = None
    return Inventory(path, groups, inline, host_lines)


def _group_priority(group: str, gvars: dict, path: Path) -> int:
    try:
        return GROUP_PRIORITY.read(gvars["ansible_group_priority"])
    except ValueError as exc:
        raise InventoryError(f"group {group}: ansible_group_priority is {gvars['ansible_group_priority']!r}: {exc}",
                             file=str(path), line=line_of(gvars, "ansible_group_priority"),
                             hint=f"ansible_group_priority must be {GROUP_PRIORITY.allowed} (higher wins)") from None


def lab_hosts(inventory: Inventory) -> list[Host]:
    """The hosts of group `lab`, which `invoke lab.up` can create on this machine."""
    return inventory.select(group="lab")


DEFAULT_INVENTORY = REPO_ROOT / "inventory" / "hosts.yml"
