"""The tasks' command-line options, parsed and checked in one place, before any file is read or host touched.

tasks.py hands each task's options over as Invoke gave them (text, a list for a repeatable option, or None when
not given); `parse_options` fills in what the configuration sets and refuses what cannot be meant: an empty
`--host` or `--inventory` (an unset shell variable) that would otherwise mean "every host" or "the default file",
a count that is not one. A refusal is a TritonfleetError: exit 2, nothing touched.

Where a default comes from, first found wins: the command line, then the `tritonfleet:` section of Invoke's
configuration, then `[defaults]` of Ansible's ansible.cfg (`inventory`, `forks`), then the built-in default.
The options Ansible users know read as Ansible reads them: `-e/--extra-vars` (`k=v`, JSON or YAML, `@FILE`),
`--tags`/`--skip-tags`, and the vault passwords (`--vault-id`, `--vault-password-file`, ANSIBLE_VAULT_PASSWORD_FILE
or ansible.cfg's `vault_password_file`, `--ask-vault-pass`), in Ansible's order.
"""

from __future__ import annotations

import codecs
import configparser
import os
import re
import stat
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import yaml

from tritonfleet.engine import vault
from tritonfleet.engine.inventory import DEFAULT_INVENTORY
from tritonfleet.errors import TritonfleetError
from tritonfleet.paths import REPO_ROOT
from tritonfleet.yamlfile import load_yaml

CONFIG_DEFAULTS = {"inventory": None, "forks": None, "bundle": None}
"""The `tritonfleet:` section of Invoke's configuration: what a task uses when its option is not given. A
project sets its own in an invoke.yaml beside tasks.py; ~/.invoke.yaml, /etc/invoke.yaml, `invoke -f FILE` and
INVOKE_TRITONFLEET_INVENTORY (_FORKS, _BUNDLE) work too. None is "not set here": ansible.cfg, then the built-in
default (Options) apply. Invoke hands an environment variable over as text when the default is None, so
INVOKE_TRITONFLEET_FORKS=abc is a clear error, not a traceback."""

ANSIBLE_CFG_KEYS = {"inventory": "inventory", "forks": "forks"}
"""Options whose default ansible.cfg's `[defaults]` section may set, below Invoke's configuration."""

VAULT_PASSWORD_FILE_ENV = "ANSIBLE_VAULT_PASSWORD_FILE"
RESERVED_VAR_PREFIXES = ("ansible_", "tritonfleet_")
"""Vars `-e` may not set: connections, host keys and secrets are read from the inventory, before any var from the
command line would reach them, so `-e ansible_user=deploy` would be silently ignored."""

CONFIG_KEYS = {"inventory": "inventory", "forks": "forks", "bundle": "bundle", "source": "bundle"}
"""Options whose default comes from the configuration, and the key there (`bundle --source` is the bundle)."""

PATHS = ("inventory", "bundle", "source")
"""Options naming a file: from the configuration, a relative one is relative to the project folder."""


@dataclass(frozen=True)
class Count:
    """`--batch` or `--max-fail`: N hosts, or P% of the hosts in the run."""

    number: int
    percent: bool = False

    def of(self, total: int, *, at_least: int = 0) -> int:
        """The number of hosts, as Ansible's pct_to_int (lib/ansible/utils/helpers.py) reads `serial`: P% of
        `total` rounded down, but at least `at_least` (Ansible's min_value); N is N. Integer arithmetic, so
        29% of 100 is 29 (Ansible's float product gives 28)."""
        if not self.percent:
            return self.number
        return total * self.number // 100 or at_least


@dataclass(frozen=True)
class Options:
    """A task's options, parsed and checked. An option not given, or one a task does not take, keeps its
    default here."""

    inventory: tuple = (str(DEFAULT_INVENTORY),)  # every --inventory, merged in order as ansible-playbook -i
    host: str | None = None
    group: str | None = None
    limit: str | None = None  # Ansible's host pattern, narrowing what --host/--group select
    models: str | None = None
    bundle: str | None = None
    source: str | None = None  # `bundle --source`
    forks: int = 10
    check: bool = False
    diff: bool = False
    fix: bool = False
    json: bool = False
    verbose: bool = False
    list_hosts: bool = False
    list_all: bool = False  # `inventory --list`
    extra_vars: tuple = ()  # each -e as given: read by command_line_vars() once the vault passwords are known
    tags: tuple = ()
    skip_tags: tuple = ()
    vault_id: tuple = ()
    vault_password_file: tuple = ()
    ask_vault_pass: bool = False
    canary: int = 1
    batch: Count = Count(25, percent=True)
    max_fail: Count = Count(0)
    hosts: int = 2  # `lab.up --hosts`: how many lab hosts

    def batch_size(self, total: int) -> int:
        """Hosts per batch after the canary, as Ansible sizes `serial: [canary, batch]`: a percentage is of all
        `total` hosts (the canary included), rounded down but at least 1. 0 stays 0, which rollout() reads
        as Ansible reads `serial: 0`: one batch of all the rest."""
        return self.batch.of(total, at_least=1)

    def failures_allowed(self, total: int) -> int:
        """Failed or unreachable hosts tolerated; one more stops the rollout. A percentage of all `total`
        hosts rounds down, so `--max-fail 10%` of 5 hosts tolerates none."""
        return self.max_fail.of(total)


def parse_options(config, **given) -> Options:
    """The task's options as given on the command line, or else from the configuration (Invoke's, then
    ansible.cfg's), checked. A relative path from Invoke's configuration is relative to the project folder (where
    tasks.py and invoke.yaml are), one from ansible.cfg to its own folder, as Ansible reads it; one on the command
    line, to the current folder."""
    values = {}
    for name, value in given.items():
        label = "--" + name.replace("_", "-")
        if name == "inventory" and not value and value is not None and not isinstance(value, str):
            value = None  # a repeatable option given no time: Invoke hands over []
        if value is None and name in CONFIG_KEYS:
            configured = _configured(config, name, label)
            if configured is not None:
                values[name] = configured
        elif value is not None:
            values[name] = PARSERS.get(name, _as_given)(value, label)
    if values.get("host") is not None and values.get("group") is not None:
        raise TritonfleetError("give --host or --group, not both")
    return Options(**values)


def _configured(config, name: str, label: str):
    """The option's value from Invoke's configuration, else from ansible.cfg, checked as the option is; an error
    says where it came from. None when neither sets it."""
    key = CONFIG_KEYS[name]
    value = config.tritonfleet[key]
    where = f"tritonfleet.{key} in Invoke's configuration"
    if value is not None and name in PATHS and str(value).strip() and "," not in str(value):
        value = str(REPO_ROOT / str(value))  # a host list (`gpu01,gpu02,`) is not a path
    if value is None and name in ANSIBLE_CFG_KEYS:
        cfg = find_ansible_cfg()
        value = _ansible_cfg_value(cfg, ANSIBLE_CFG_KEYS[name]) if cfg else None
        where = f"{ANSIBLE_CFG_KEYS[name]} in {cfg}"
    if value is None:
        return None
    try:
        return PARSERS[name](value, label)
    except TritonfleetError as exc:
        raise TritonfleetError(f"{exc.message} (from {where})", hint=exc.hint) from None


def find_ansible_cfg() -> Path | None:
    """The ansible.cfg Ansible would read (config/manager.py find_ini_config_file), the first that exists of:
    ANSIBLE_CONFIG (a file, or a folder holding ansible.cfg), ./ansible.cfg unless the current folder is world-
    writable, ~/.ansible.cfg, /etc/ansible/ansible.cfg."""
    candidates = []
    if "ANSIBLE_CONFIG" in os.environ:
        named = Path(os.path.expandvars(os.environ["ANSIBLE_CONFIG"])).expanduser().absolute()
        candidates.append(named / "ansible.cfg" if named.is_dir() else named)
    try:
        if not Path.cwd().stat().st_mode & stat.S_IWOTH:
            candidates.append(Path.cwd() / "ansible.cfg")
    except OSError:
        pass  # a current folder gone or unreadable is skipped, as by Ansible
    candidates += [Path("~/.ansible.cfg").expanduser(), Path("/etc/ansible/ansible.cfg")]
    return next((path for path in candidates if path.is_file() and os.access(path, os.R_OK)), None)


def _ansible_cfg_value(cfg: Path, key: str) -> str | None:
    """`[defaults] key` of ansible.cfg as Ansible reads it: raw, `;` starts an inline comment; a path relative to
    the file's folder, `~` and $VARS expanded; `inventory` a comma-separated list of sources."""
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",))
    try:
        parser.read(cfg, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise TritonfleetError(f"ansible.cfg cannot be read: {exc}", file=str(cfg),
                               hint="fix the file, or point ANSIBLE_CONFIG at another") from None
    value = parser.get("defaults", key, raw=True, fallback=None)
    if value is None or key == "forks":
        return value
    paths = [p.strip() for p in value.split(",") if p.strip()] if key == "inventory" else [value.strip()]
    resolved = [str(cfg.parent / Path(os.path.expandvars(p)).expanduser()) for p in paths]
    if key == "inventory":
        return resolved
    return resolved[0] if resolved else ""


def vault_sources(opts: Options) -> list[tuple[str, str]]:
    """(vault id, password file or vault.PROMPT) in Ansible's order (cli/__init__.py setup_vault_secrets): every
    --vault-id, every --vault-password-file, ANSIBLE_VAULT_PASSWORD_FILE or else ansible.cfg's
    vault_password_file, then --ask-vault-pass's prompt. `--vault-id FILE` (no label) and a password file have the
    vault id `default`."""
    sources = []
    for item in opts.vault_id:
        label, where = (item.split("@", 1) if "@" in item else ("", item))
        if not where.strip():
            raise TritonfleetError(f"--vault-id {item!r} names no password file",
                                   hint="give --vault-id LABEL@FILE, LABEL@prompt or FILE")
        sources.append((label or vault.DEFAULT_ID, where))
    sources += [(vault.DEFAULT_ID, path) for path in opts.vault_password_file]
    default_file = _default_vault_password_file()
    if default_file:
        sources.append((vault.DEFAULT_ID, default_file))
    if opts.ask_vault_pass:
        sources.append((vault.DEFAULT_ID, vault.PROMPT))
    return sources


def _default_vault_password_file() -> str | None:
    """ANSIBLE_VAULT_PASSWORD_FILE, else ansible.cfg's `[defaults] vault_password_file`, as Ansible's
    DEFAULT_VAULT_PASSWORD_FILE."""
    if VAULT_PASSWORD_FILE_ENV in os.environ:
        return _text(os.environ[VAULT_PASSWORD_FILE_ENV], VAULT_PASSWORD_FILE_ENV)
    cfg = find_ansible_cfg()
    return _ansible_cfg_value(cfg, "vault_password_file") if cfg else None


def command_line_vars(opts: Options) -> dict:
    """The vars the command line sets, above every other var: `--models` (the var model_repository), then each
    `-e` in turn, a later one replacing a var an earlier one set. As Ansible's -e, they win over everything,
    `--models` included. Read once the vault passwords are configured: an `-e @FILE` may be vaulted."""
    found = {"model_repository": opts.models} if opts.models else {}
    for item in opts.extra_vars:
        found.update(_extra_vars(item))
    return found


def _extra_vars(item: str) -> dict:
    """One `-e`, as Ansible's load_extra_vars reads it: `@FILE` (YAML or JSON), a JSON or YAML mapping (starting
    with `{`), or `key=value` words (text values)."""
    if item.startswith("@"):
        data = load_yaml(item[1:])
    elif item[0] in "/.":
        raise TritonfleetError(f"-e {item!r} looks like a file name", hint=f"prepend @ to read the file: -e @{item}")
    elif item[0] in "[{":
        try:
            data = yaml.safe_load(item)
        except yaml.YAMLError as exc:
            raise TritonfleetError(f"-e {item!r} is not valid JSON or YAML: {exc}",
                                   hint="quote the whole mapping for the shell: -e '{\"key\": \"value\"}'") from None
    else:
        data = parse_kv(item)
    if not isinstance(data, dict):
        raise TritonfleetError(f"-e {item!r} is not a mapping of vars", hint="give key=value, a JSON object or @FILE "
                                                                           "holding a mapping")
    for name in data:
        _check_var_name(name, item)
    return data


def _check_var_name(name, item: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise TritonfleetError(f"-e {item!r}: {name!r} is not a var name",
                               hint="a var name is letters, digits and _, not starting with a digit")
    if name.startswith(RESERVED_VAR_PREFIXES):
        raise TritonfleetError(f"-e {item!r}: {name} is read from the inventory only (connections, host keys and "
                               "secrets are set up before command-line vars apply)",
                               hint=f"set {name} in the inventory (host_vars/, group_vars/ or the inventory file)")


_QUOTED = re.compile(r""""(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'""")
_ARG_WORD = re.compile(r"""(?:"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}|\S)+""", re.S)
_UNESCAPED_EQUALS = re.compile(r"(?<!\\)=")
_LONE_QUOTE = re.compile(r"""(?<!\\)["']""")
_ESCAPE = re.compile(r"""\\U[0-9a-fA-F]{8}|\\u[0-9a-fA-F]{4}|\\x[0-9a-fA-F]{2}|\\N\{[^}]+\}|\\[\\'"abfnrtv]""")


def parse_kv(text: str) -> dict:
    """`key=value` words as Ansible's parse_kv reads them (parsing/splitter.py): words split at spaces outside
    quotes and Jinja2 blocks, escapes decoded, a word split at its first `=` not escaped, the value's surrounding
    quotes removed. A word without `=` is refused (Ansible would set a var named `_raw_params`), as are unbalanced
    quotes (Ansible's error too)."""
    found = {}
    for word in _ARG_WORD.findall(text):
        if _LONE_QUOTE.search(_QUOTED.sub("", word)):
            raise TritonfleetError(f"-e {text!r}: unbalanced quotes in {word!r}",
                                   hint="close the quote, or escape it with a backslash")
        decoded = _ESCAPE.sub(lambda m: codecs.decode(m[0], "unicode-escape"), word)
        split = _UNESCAPED_EQUALS.search(decoded, 1)
        if not split:
            raise TritonfleetError(f"-e {text!r}: {word!r} is not key=value",
                                   hint="give each var as key=value (quote values with spaces: key='a b')")
        found[decoded[:split.start()].strip()] = _unquote(decoded[split.start() + 1:].strip())
    return found


def _unquote(value: str) -> str:
    quoted = len(value) > 1 and value[0] == value[-1] and value[0] in "\"'" and value[-2] != "\\"
    return value[1:-1] if quoted else value


def _as_given(value, label: str):
    return value


def _text(value, label: str) -> str:
    """A name or path: empty is refused, never read as "not given" (`--host "$HOSTS"` with HOSTS unset
    would otherwise deploy to every host)."""
    if not str(value).strip():
        raise TritonfleetError(f"{label} is empty", hint="give it a value, or leave it out")
    return str(value)


def _whole_number(value, label: str, minimum: int) -> int:
    """Digits only: int() would also take '+5', ' 5' and '1_0'."""
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]+", text):
        raise TritonfleetError(f"{label} must be a whole number, got {value!r}")
    if int(text) < minimum:
        raise TritonfleetError(f"{label} must be at least {minimum}, got {int(text)}")
    return int(text)


def _count(value, label: str) -> Count:
    """`N` or `P%`, whole numbers as Ansible's `serial` takes them, P at most 100."""
    text = str(value).strip()
    match = re.fullmatch(r"([0-9]+)(%?)", text)
    if not match or (match[2] and int(match[1]) > 100):
        raise TritonfleetError(f"{label} must be a number of hosts N or a percentage P% (0% to 100%), got {value!r}",
                               hint=f"use e.g. {label} 2 or {label} 25%")
    return Count(int(match[1]), percent=bool(match[2]))


def _inventories(values, label: str) -> tuple:
    """Every inventory source, in order: one text (a configuration's), or the list of a repeated --inventory."""
    return _texts([values] if isinstance(values, str) else values, label)


def _texts(values, label: str) -> tuple:
    """A repeatable option (`-e a=1 -e b=2`): each value checked as one."""
    return tuple(_text(value, label) for value in values)


def _tags(values, label: str) -> tuple:
    """`--tags a,b --tags c`, as Ansible splits them: at commas, spaces around a tag dropped."""
    tags = tuple(dict.fromkeys(t.strip() for value in values for t in str(value).split(",") if t.strip()))
    if values and not tags:
        raise TritonfleetError(f"{label} names no tag", hint=f"give {label} TAG[,TAG], or leave it out")
    return tags


PARSERS = {
    "host": _text, "group": _text, "limit": _text, "models": _text, "inventory": _inventories, "bundle": _text,
    "source": _text, "forks": partial(_whole_number, minimum=1), "hosts": partial(_whole_number, minimum=1),
    "canary": partial(_whole_number, minimum=0),
    "batch": _count, "max_fail": _count,
    "extra_vars": _texts, "vault_id": _texts, "vault_password_file": _texts, "tags": _tags, "skip_tags": _tags,
}
