"""Typed vars: what each var tritonfleet reads may hold, checked and normalized once, after Jinja2 rendering.

Inventory values arrive as YAML read them or as text (Jinja2 renders to text; INI `:vars` are text): `8000`,
`"8000"`, `yes`, `"false"`. A typed var is read the way Ansible reads that kind of value (booleans as Ansible's
`boolean()`) into one Python type, so the code past this point uses it as it is: no `int()`, no truthiness of a
string. A value that does not fit is refused naming the host, the var, the file and line that set it, the
value and what is allowed. Vars without a type (the user's own) pass through untouched.

The tables: `engine/inventory.py` CONNECTION_VARS (ansible_host, ansible_port, ...), `triton/layout.py` VAR_TYPES.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Callable

from tritonfleet.errors import InventoryError

# Ansible's module_utils/parsing/convert_bool.py: text compared lower-cased and stripped
BOOLEANS_TRUE = frozenset(("y", "yes", "on", "1", "true", "t", 1, 1.0, True))
BOOLEANS_FALSE = frozenset(("n", "no", "off", "0", "false", "f", 0, 0.0, False))
WHOLE_NUMBER = re.compile(r"[-+]?[0-9]+")
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
SETTING_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class VarType:
    """What a var may hold, in words for the error (`allowed`), and how a value is read into it (`read` raises
    ValueError saying what is wrong with the value, or with an empty text when `allowed` says it all)."""

    allowed: str
    read: Callable[[object], object]


def yaml_kind(value) -> str:
    """What YAML made of a value, for an error about a value of the wrong kind."""
    if value is None:
        return "empty (YAML null)"
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _as_text(value) -> str:
    """Text, or a whole number as its digits; YAML's other readings of an unquoted value are refused, since
    its text is lost (`10.10` is 10.1, `yes` is True, `~` is None)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{yaml_kind(value)}, not text (quote the value if it is meant as text)")


def whole_number(low: int | None = None, high: int | None = None, allowed: str = "") -> VarType:
    """An int (from an int or its digits as text) from `low` to `high`; never a bool or a float (22.9 is not 22)."""
    def read(value):
        if isinstance(value, str) and WHOLE_NUMBER.fullmatch(value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("not a whole number" if isinstance(value, (str, float)) else
                             f"{yaml_kind(value)}, not a whole number")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError("out of range")
        return value

    if not allowed:
        bounds = {(True, True): f" from {low} to {high}", (True, False): f", {low} or more",
                  (False, True): f", {high} or less", (False, False): ""}
        allowed = "a whole number" + bounds[(low is not None, high is not None)]
    return VarType(allowed, read)


def boolean(value) -> bool | None:
    """Ansible's boolean (module_utils/parsing/convert_bool.py): True or False for its words (any case) and
    numbers, None for any other value. Vars, module arguments and the `bool` filter all read booleans here."""
    if isinstance(value, bool):
        return value
    key = value.strip().lower() if isinstance(value, str) else value
    if isinstance(key, (str, int, float)):
        if key in BOOLEANS_TRUE:
            return True
        if key in BOOLEANS_FALSE:
            return False
    return None


def _read_boolean(value) -> bool:
    result = boolean(value)
    if result is None:
        raise ValueError("" if isinstance(value, str) else f"{yaml_kind(value)}, not a boolean")
    return result


BOOLEAN = VarType("a boolean: true/false, yes/no, on/off, y/n, t/f or 1/0, in any case", _read_boolean)
PORT = whole_number(1, 65535, "a port number from 1 to 65535")


def choice(*options: str) -> VarType:
    """One of `options`, in any case (read lower-cased)."""
    def read(value):
        if isinstance(value, str) and value.strip().lower() in options:
            return value.strip().lower()
        raise ValueError("" if isinstance(value, str) else f"{yaml_kind(value)}, not text")

    return VarType(f"one of {', '.join(options)}", read)


def text(pattern: re.Pattern | None = None, allowed: str = "text", problem: str = "") -> VarType:
    """Text that, when `pattern` is given, matches it whole (`problem` says what is wrong otherwise)."""
    def read(value):
        value = _as_text(value)
        if pattern is not None and not pattern.fullmatch(value):
            raise ValueError(problem)
        return value

    return VarType(allowed, read)


def optional(vartype: VarType) -> VarType:
    """`vartype`, or unset: null or empty text, kept as it is."""
    def read(value):
        return value if value is None or value == "" else vartype.read(value)

    return VarType(f"{vartype.allowed}, or empty", read)


def absolute_path(char: re.Pattern, chars: str) -> VarType:
    """An absolute POSIX path of characters matching `char` (described by `chars`), never `/` itself and
    without `.` or `..` parts; read without repeated or trailing slashes."""
    def read(value):
        path = _as_text(value)
        if not path.startswith("/"):
            raise ValueError("not an absolute path")
        bad = sorted({c for c in path if not char.fullmatch(c)})
        if bad:
            raise ValueError(f"it holds {' '.join(repr(c) for c in bad)}")
        parts = [p for p in path.split("/") if p]
        if "." in parts or ".." in parts:
            raise ValueError("it has a '.' or '..' part")
        if not parts:
            raise ValueError("it is the root folder")
        return "/" + "/".join(parts)

    return VarType(f"an absolute path (not /) of {chars}", read)


def _split_words(value: str) -> list[str]:
    try:
        return shlex.split(value)
    except ValueError as exc:  # shlex's "No closing quotation", "No escaped character"
        raise ValueError(f"cannot be split into arguments as a shell would: {exc}") from None


def _read_shell_words(value) -> str:
    value = _as_text(value)
    _split_words(value)
    return value


# Text that is split into arguments where it is used (ansible_ssh_common_args): checked here, kept as text.
SHELL_WORDS = VarType("arguments as one line of text, quoted as for a shell", _read_shell_words)


def _read_arguments(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        words = _split_words(value)
    elif isinstance(value, list):
        words = [_item(i, v, text()) for i, v in enumerate(value, 1)]
    else:
        raise ValueError(f"{yaml_kind(value)}, not a list or text")
    for word in words:
        if CONTROL_CHARS.search(word):
            raise ValueError(f"argument {word!r} holds control characters (a newline, a tab)")
    return words


# A list of arguments, or one text split as a shell would (`"--log-info=true --log-warning=true"` is 2).
ARGUMENTS = VarType("a list of arguments, or one text split into arguments as a shell would", _read_arguments)


def _item(index: int, value, vartype: VarType):
    try:
        return vartype.read(value)
    except ValueError as exc:
        raise ValueError(f"item {index} ({value!r}) is {str(exc) or 'not ' + vartype.allowed}") from None


def text_list(item: VarType, commas: bool = False) -> VarType:
    """A list of `item`s (empty when null); with `commas`, one text of comma-separated items too."""
    def read(value):
        if value is None:
            return []
        if commas and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ValueError(f"{yaml_kind(value)}, not a list")
        return [_item(i, v, item) for i, v in enumerate(value, 1)]

    return VarType(f"a list of {item.allowed}" + (", or one text of them separated by commas" if commas else ""),
                   read)


def _setting_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, (str, int, float)):
        raise ValueError(f"{yaml_kind(value)}, not text, a number or a boolean")
    if CONTROL_CHARS.search(str(value)):
        raise ValueError("text with control characters (a newline, a tab)")
    return str(value)


def _read_settings(value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{yaml_kind(value)}, not a mapping")
    read = {}
    for group, settings in value.items():
        if not isinstance(group, str) or not SETTING_NAME.fullmatch(group):
            raise ValueError(f"name {group!r} is not a name of letters, digits, '_', '.' and '-'")
        if not isinstance(settings, dict):
            raise ValueError(f"the settings of {group!r} are {yaml_kind(settings)}, not a mapping")
        read[group] = {}
        for name, setting in settings.items():
            if not isinstance(name, str) or not SETTING_NAME.fullmatch(name):
                raise ValueError(f"setting {name!r} of {group!r} is not a name of letters, digits, '_', '.' and '-'")
            try:
                read[group][name] = _setting_value(setting)
            except ValueError as exc:
                raise ValueError(f"setting {name!r} of {group!r} is {exc}") from None
    return read


# {name: {setting: value}}, values read as text (booleans as true/false): triton_backend_config
NAMED_SETTINGS = VarType("a mapping of names to mappings of settings to values (text, numbers or booleans), "
                         "e.g. {python: {shm-default-byte-size: 16777216}}", _read_settings)


def checked_vars(values: dict, types: dict[str, VarType], host: str, origins: dict) -> dict:
    """`values` with each typed var read into its type. The first that does not fit is an InventoryError naming
    the host, the var, its value, what is allowed and, from `origins` (var -> (file, line)), where it was set."""
    checked = dict(values)
    for var, vartype in types.items():
        if var not in values:
            continue
        try:
            checked[var] = vartype.read(values[var])
        except ValueError as exc:
            file, line = origins.get(var, (None, None))
            problem = f": {exc}" if str(exc) else ""
            raise InventoryError(f"host {host}: {var} is {values[var]!r}{problem}", file=file, line=line,
                                 hint=f"{var} must be {vartype.allowed}") from None
    return checked
