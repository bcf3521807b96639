"""Inventories as Ansible reads them: every source `ansible-playbook -i` takes, one or several, with Ansible's var
precedence, then each host's vars rendered (Jinja2) and the connection vars checked.

Sources (as ansible-core picks a plugin for each, engine/inventory_*.py):
- an executable file: a dynamic inventory script, run with `--list` (engine/inventory_script.py);
- a file with no extension or .yml/.yaml/.json that is a YAML mapping: Ansible's YAML format
  (engine/inventory_yaml.py); any other file: Ansible's INI format (engine/inventory_ini.py);
- a directory: each of its entries, sorted by name, subdirectories too; hidden entries, group_vars/, host_vars/
  and the extensions Ansible skips (IGNORED_IN_DIRECTORY) left out;
- a text with a comma that is not a path: a list of hosts (`gpu01,gpu02:2222,`);
- several sources: read in the order given into one inventory, as Ansible merges them.
Host patterns (`gpu[01:16]`, `host:port`) are expanded as Ansible expands them (engine/hostrange.py).

Variable precedence follows Ansible's (lowest first; `group_vars/` and `host_vars/` are those beside each source:
the directory itself for a directory, the file's folder otherwise; for several sources, source by source):
  1. the vars of group `all` in the inventory sources
  2. the vars of the host's other groups in the sources, by group depth, then `ansible_group_priority`, then name
  3. `group_vars/all`
  4. `group_vars/<group>`, in the same group order
  5. the host's own vars in the sources
  6. `host_vars/<host>`
A child group overrides its parent; between groups of the same depth the one whose name sorts last wins, unless
`ansible_group_priority` says otherwise (higher wins). Values may use Jinja2 with `inventory_dir`,
`inventory_hostname`, `group_names` and any other var of the host; each var is rendered after the vars it
uses. Then the connection vars (CONNECTION_VARS) are checked and read into their types (engine/varspec.py).

`ansible_list` and `ansible_host` give what `ansible-inventory --list` and `--host NAME` print.
Not read (each named as such when given): inventory plugin configs (`plugin:`), TOML inventories.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import jinja2.meta

from tritonfleet import secrets
from tritonfleet.engine import hostrange, varspec, vault
from tritonfleet.engine.inventory_data import Group, InventoryData, Layer
from tritonfleet.engine.inventory_ini import read_ini_inventory
from tritonfleet.engine.inventory_script import NotExecutable, read_script_inventory
from tritonfleet.engine.inventory_yaml import SSH_WORD, check_host_name, read_yaml_inventory
from tritonfleet.errors import InventoryError
from tritonfleet.paths import REPO_ROOT
from tritonfleet.yamlfile import line_of, load_yaml, read_text

VARS_FILE_EXTENSIONS = ("", ".yml", ".yaml", ".json")  # Ansible's, in the order it looks for them
YAML_EXTENSIONS = ("", ".yml", ".yaml", ".json")  # the files Ansible's yaml plugin reads
HOST_KEY_POLICIES = ("strict", "accept-new")
KNOWN_HOSTS_SHOWN = 20
# Ansible's IGNORED in inventory/manager.py with its default INVENTORY_IGNORE_EXTS
IGNORED_IN_DIRECTORY = re.compile(r"^\.|^host_vars$|^group_vars$|^vars_plugins$"
                                  r"|(\.pyc|\.pyo|\.swp|\.bak|~|\.rpm|\.md|\.txt|\.rst|\.orig|\.cfg|\.retry)$")
# Ansible's INTERNAL_STATIC_VARS: never shown by `ansible-inventory`
INTERNAL_VARS = frozenset((
    "ansible_async_path", "ansible_collection_name", "ansible_config_file", "ansible_dependent_role_names",
    "ansible_diff_mode", "ansible_facts", "ansible_forks", "ansible_inventory_sources", "ansible_limit",
    "ansible_play_batch", "ansible_play_hosts", "ansible_play_hosts_all", "ansible_play_role_names",
    "ansible_playbook_python", "ansible_role_name", "ansible_role_names", "ansible_run_tags", "ansible_skip_tags",
    "ansible_verbosity", "ansible_version", "inventory_dir", "inventory_file", "inventory_hostname",
    "inventory_hostname_short", "groups", "group_names", "hostvars", "playbook_dir", "play_hosts", "role_name",
    "role_names", "role_path", "role_uuid"))
_JINJA = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
_ADDRESS = varspec.text(SSH_WORD, "a host name or IP address (no spaces, not starting with '-')",
                        "not a host name or address")
# A line only an INI inventory has: a [section] header, or a host with key=value vars
_INI_LINE = re.compile(r"\[[^\]\s]+\]\s*|[^\s#;=:\[]+(\s+[A-Za-z_]\w*=\S*)+\s*")

# The vars the engine reads (Host below, engine/connection.py), each with its type; Triton's are in
# triton/layout.py VAR_TYPES.
CONNECTION_VARS = {
    "ansible_host": _ADDRESS,
    "ansible_port": varspec.PORT,
    "ansible_user": varspec.text(SSH_WORD, "a user name (no spaces, not starting with '-')",
                                 "not a user name"),
    "ansible_ssh_private_key_file": varspec.optional(varspec.text(allowed="a file on this machine")),
    "ansible_ssh_common_args": varspec.optional(varspec.SHELL_WORDS),
    "ansible_ssh_extra_args": varspec.optional(varspec.SHELL_WORDS),
    "ansible_become": varspec.BOOLEAN,
    "ansible_become_user": varspec.optional(varspec.text(SSH_WORD, "a user name (no spaces)", "not a user name")),
    "ansible_become_password": varspec.optional(varspec.text()),
    "tritonfleet_become_password_env": varspec.optional(varspec.text(
        re.compile(r"[A-Za-z_][A-Za-z0-9_]*"), "the name of an environment variable", "not a variable name")),
    "tritonfleet_host_key_policy": varspec.optional(varspec.choice(*HOST_KEY_POLICIES)),
    "tritonfleet_secret_vars": varspec.text_list(varspec.text(allowed="var names"), commas=True),
}


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
    """Groups and hosts read from the sources; each host's vars merged, rendered and checked when first asked for."""

    def __init__(self, sources: list[str], data: InventoryData, vars_dirs: list[Path]):
        self.path = Path(sources[0])  # the first source, named in errors
        self.groups: dict[str, Group] = data.groups
        self._data = data
        # only the folders that exist, each looked up once (as Ansible, which skips a group_vars that is a file)
        self._group_vars_dirs = [d / "group_vars" for d in vars_dirs if (d / "group_vars").is_dir()]
        self._host_vars_dirs = [d / "host_vars" for d in vars_dirs if (d / "host_vars").is_dir()]
        self._depths = _group_depths(data.groups)
        self._lineage: dict[str, set] = {}
        self._group_files: dict[tuple, Layer] = {}
        self._hosts: dict[str, Host] = {}

    @property
    def host_names(self) -> list[str]:
        return list(self._data.hosts)

    def _known_hosts_hint(self) -> str:
        """The first host names, not all of them: an inventory may hold tens of thousands."""
        names = self.host_names
        more = f" and {len(names) - KNOWN_HOSTS_SHOWN} more" if len(names) > KNOWN_HOSTS_SHOWN else ""
        return f"known hosts: {', '.join(names[:KNOWN_HOSTS_SHOWN]) or '(none)'}{more}"

    def _check_host(self, name: str) -> None:
        if name not in self._data.hosts:
            raise InventoryError(f"unknown host '{name}'", file=str(self.path), hint=self._known_hosts_hint())

    def host(self, name: str) -> Host:
        self._check_host(name)
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

    def group_names(self, host: str) -> list[str]:
        """The host's groups and their ancestors but `all`, sorted by name (Ansible's `group_names`)."""
        found = set()
        for group in self._data.hosts[host].groups:
            if group not in self._lineage:
                self._lineage[group] = {group} | self._data.ancestors(group)
            found |= self._lineage[group]
        return sorted(found - {"all"})

    def inventory_vars(self, name: str) -> Layer:
        """The host's vars as the inventory sets them, merged with Ansible's precedence, not rendered."""
        self._check_host(name)
        entry = self._data.hosts[name]
        names = self.group_names(name)
        ordered = sorted(names, key=lambda g: (self._depths[g], self.groups[g].priority, g))
        file = os.path.abspath(entry.file)
        merged = Layer()
        for layer in (self.groups["all"].vars, *(self.groups[g].vars for g in ordered),
                      *(self._group_file_vars(d, "all") for d in self._group_vars_dirs),
                      *(self._group_file_vars(d, g) for d in self._group_vars_dirs for g in ordered),
                      _magic({"inventory_file": file, "inventory_dir": os.path.dirname(file)}, entry),
                      entry.vars,
                      _magic({"inventory_hostname": name, "inventory_hostname_short": _short_name(name),
                              "group_names": names}, entry),
                      *(_vars_layer(d, name) for d in self._host_vars_dirs)):
            merged.add_layer(layer)
        return merged

    def _group_file_vars(self, folder: Path, group: str) -> Layer:
        """group_vars/<group> of one source, read once (hosts share their groups)."""
        key = (folder, group)
        if key not in self._group_files:
            self._group_files[key] = _vars_layer(folder, group)
        return self._group_files[key]

    def _resolve(self, name: str) -> Host:
        merged = self.inventory_vars(name)
        values = _render_vars(merged.values, name, merged.origins)
        # secret vars (tritonfleet/secrets.py) are redacted from every output from here on, errors included
        secrets.register(secrets.secret_values(values))
        values = varspec.checked_vars(values, CONNECTION_VARS, name, merged.origins)
        return Host(name=name, vars=values, groups=tuple(self.group_names(name)), origins=merged.origins)


def _group_depths(groups: dict[str, Group]) -> dict[str, int]:
    """Each group's depth below `all`: its longest path from `all`, as Ansible's Group.depth (no cycles: they are
    refused when the inventory is read)."""
    depths = {"all": 0}

    def depth(name: str) -> int:
        if name not in depths:
            depths[name] = 1 + max(depth(p) for p in groups[name].parents)
        return depths[name]

    for name in groups:
        depth(name)
    return depths


def _magic(values: dict, entry) -> Layer:
    layer = Layer()
    for var, value in values.items():
        layer.set(var, value, (entry.file, entry.line))
    return layer


def _short_name(name: str) -> str:
    """Ansible's inventory_hostname_short: the name up to its first dot, unless it is an IP address."""
    try:
        ipaddress.ip_address(name)
        return name
    except ValueError:
        return name.split(".")[0]


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


def load_inventory(sources: str | Path | list) -> Inventory:
    """Read one inventory source, or several in order (`--inventory` given more than once) into one inventory,
    with the group_vars/ and host_vars/ beside each."""
    sources = [str(s) for s in ([sources] if isinstance(sources, (str, Path)) else sources)]
    if not sources:
        raise InventoryError("no inventory given", hint="pass --inventory FILE")
    data = InventoryData()
    vars_dirs = []
    for source in sources:
        path = Path(source).expanduser()
        if "," in source and not path.exists():
            _read_host_list(source, data)
            continue
        _read_source(path, data)
        vars_dirs.append(path if path.is_dir() else path.parent)
    data.reconcile()
    return Inventory(sources, data, vars_dirs)


def _read_source(path: Path, data: InventoryData) -> None:
    if path.is_dir():
        _read_directory(path, data)
    elif not path.exists():
        raise InventoryError("cannot read: no such file or directory", file=str(path),
                             hint="check the path and its permissions")
    elif os.access(path, os.X_OK) and _read_script(path, data):
        return
    else:
        _read_file(path, data)


def _read_directory(path: Path, data: InventoryData) -> None:
    """Each entry of an inventory directory, sorted by name, as Ansible reads them."""
    entries = sorted(e for e in os.listdir(path) if not IGNORED_IN_DIRECTORY.search(e))
    if not entries:
        raise InventoryError("this inventory directory holds no inventory file", file=str(path),
                             hint="put inventory files in it (hidden files, group_vars/, host_vars/ and .md/.txt/"
                                  ".cfg files are skipped), or name the inventory file itself")
    for entry in entries:
        _read_source(path / entry, data)


def _read_script(path: Path, data: InventoryData) -> bool:
    """Run an executable file as a dynamic inventory; False when the system would not run it (no `#!` line)."""
    try:
        read_script_inventory(path, data)
    except NotExecutable:
        return False
    return True


def _read_file(path: Path, data: InventoryData) -> None:
    """A YAML or INI inventory file, told apart as Ansible does: a file named as YAML is YAML if it holds a
    mapping, and INI otherwise; any other file is INI. When neither reads, the error shown is the one of the
    format the file looks like."""
    if path.suffix == ".toml":
        raise InventoryError("TOML inventories are not supported", file=str(path),
                             hint=f"convert it: `ansible-inventory -i {path} --list --yaml --export`")
    content, yaml_error = None, None
    if path.suffix in YAML_EXTENSIONS:
        try:
            content = load_yaml(path, InventoryError)
        except InventoryError as exc:
            yaml_error = exc
        if isinstance(content, dict):
            _refuse_plugin_config(content, path)
            read_yaml_inventory(content, str(path), data)
            return
        if content is None and yaml_error is None:
            raise InventoryError("inventory is empty", file=str(path),
                                 hint="add at least `all: {hosts: {NAME: {ansible_host: ADDRESS}}}`")
    text = read_text(path, InventoryError, "inventory file")
    if vault.is_encrypted(text):  # not decrypted by load_yaml (no password), or decrypted to INI
        raise yaml_error or InventoryError("an INI inventory encrypted with Ansible Vault is not read",
                                           file=str(path), line=1, hint="encrypt values in a YAML inventory "
                                                                        "(`ansible-vault encrypt_string`) instead")
    if text.startswith("#!"):  # Ansible would read it as INI: its lines as host names
        raise InventoryError("this file starts with `#!` but is not executable, so it is not run as a dynamic "
                             "inventory", file=str(path), line=1, hint=f"make it executable: chmod +x {path}")
    try:
        read_ini_inventory(text, str(path), data)
    except InventoryError:
        if path.suffix not in YAML_EXTENSIONS or isinstance(content, str) or _looks_like_ini(text):
            raise
        raise yaml_error or InventoryError("inventory must be a mapping of group names", file=str(path),
                                           line=line_of(content) or 1,
                                           hint="start with `all:` and put `hosts:`, `vars:`, `children:` under it")


def _looks_like_ini(text: str) -> bool:
    return any(_INI_LINE.fullmatch(line) for line in text.splitlines())


def _refuse_plugin_config(content: dict, path: Path) -> None:
    if isinstance(content.get("plugin"), str):
        raise InventoryError(f"this is an inventory plugin config (plugin: {content['plugin']}), which is not "
                             "read", file=str(path), line=line_of(content, "plugin"),
                             hint=f"run it through Ansible as a dynamic inventory: an executable script holding "
                                  f"`#!/bin/sh` and `exec ansible-inventory -i {path.resolve()} \"$@\"`")


def _read_host_list(source: str, data: InventoryData) -> None:
    """`gpu01,gpu02:2222,`: hosts in `ungrouped`, as Ansible's host_list plugin (no ranges)."""
    origin = (source, None)
    for item in (i.strip() for i in source.split(",")):
        if not item:
            continue
        address, port = hostrange.split_port(item)
        name, port = (item, None) if address is None or "[" in address else (address, port)
        check_host_name(name, origin)
        if name not in data.hosts:
            data.add_host(name, "ungrouped", port, origin)


def ansible_list(inventory: Inventory) -> dict:
    """What `ansible-inventory --list` prints: each group's hosts and children (empty ones left out, `all` without
    hosts), and under `_meta.hostvars` the vars of each host that has any, as the inventory sets them (not
    rendered, not checked, no tritonfleet defaults, Ansible's internal vars left out)."""
    listing: dict = {"_meta": {"hostvars": {}, "profile": "inventory_legacy"}}
    for group in inventory.groups.values():
        entry = {"hosts": list(group.hosts) if group.name != "all" else [], "children": list(group.children)}
        entry = {key: names for key, names in entry.items() if names}
        if entry:
            listing[group.name] = entry
    for name in inventory.host_names:
        host_vars = ansible_host(inventory, name)
        if host_vars:
            listing["_meta"]["hostvars"][name] = host_vars
    return listing


def ansible_host(inventory: Inventory, name: str) -> dict:
    """What `ansible-inventory --host NAME` prints: the host's vars as the inventory sets them. Its secret vars
    are registered (tritonfleet/secrets.py), so that printing through report.redact hides them, as every output."""
    values = inventory.inventory_vars(name).values
    secrets.register(secrets.secret_values(values))
    return {var: value for var, value in values.items() if var not in INTERNAL_VARS}


def ansible_json(value) -> str:
    """JSON as `ansible-inventory` prints it: keys sorted, indented by 4, dates as ISO 8601 text."""
    return json.dumps(value, sort_keys=True, indent=4, default=_json_default)


def _json_default(value):
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return str(value)


def lab_hosts(inventory: Inventory) -> list[Host]:
    """The hosts of group `lab`, which `invoke lab.up` can create on this machine."""
    return inventory.select(group="lab")


DEFAULT_INVENTORY = REPO_ROOT / "inventory" / "hosts.yml"
