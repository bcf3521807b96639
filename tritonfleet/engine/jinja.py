"""The Jinja2 environment of playbooks, templates and inventory values, with the filters and tests Ansible adds.

Ansible users write `{{ x | to_nice_json }}`, `{{ flag | bool }}`, `when: v is version('2.0', '>=')`: the common
filters and tests of ansible-core (lib/ansible/plugins/filter/core.py, plugins/test/core.py and mathstuff.py) are
here with the same names, arguments and results, so a value written for Ansible renders the same. Where this
file differs, it says so: `bool` refuses a value that is not a boolean, and `version` compares loose versions
only. An undefined variable is an error, never empty text (StrictUndefined).

A template that fails for the values it is given (`{{ 1/0 }}`, `{{ 'a' + 1 }}`) raises RenderError, which says
why in words; callers add the file and line. `checked_tree` finds at load what Jinja2 finds only while
rendering: a filter or test that does not exist inside an `{% if %}` branch.
"""

from __future__ import annotations

import base64
import difflib
import functools
import json
import operator
import os.path
import re
import shlex
from collections.abc import Mapping

import jinja2
import jinja2.meta
import yaml
from jinja2 import nodes

from tritonfleet.engine.varspec import boolean
from tritonfleet.errors import TritonfleetError

# Ansible's booleans (module_utils/parsing/convert_bool.py): text compared lower-cased and stripped
LIST_MERGES = ("replace", "keep", "append", "prepend", "append_rp", "prepend_rp")
VERSION_OPERATORS = {"==": operator.eq, "=": operator.eq, "eq": operator.eq, "<": operator.lt, "lt": operator.lt,
                     "<=": operator.le, "le": operator.le, ">": operator.gt, "gt": operator.gt, ">=": operator.ge,
                     "ge": operator.ge, "!=": operator.ne, "<>": operator.ne, "ne": operator.ne}
_LOOSE_VERSION_PART = re.compile(r"(\d+ | [a-z]+ | \.)", re.VERBOSE)
# a variable given to these may be undefined: `x | default(1)`, `x is defined`
GUARD_FILTERS = ("default", "d")
GUARD_TESTS = ("defined", "undefined")


class FilterError(jinja2.TemplateRuntimeError):
    """A filter or test given a value it cannot take (Ansible's AnsibleFilterError)."""


class RenderError(TritonfleetError):
    """A template that failed for the values it was given: the reason in words (Jinja2's, or Python's for `1/0`)."""

    def __init__(self, source: str, error: Exception):
        self.reason = error.message if isinstance(error, jinja2.TemplateError) and error.message else \
            f"{error} ({type(error).__name__})"
        super().__init__(f"cannot render {source!r}: {self.reason}",
                         hint="fix the expression, or the values it is given")


def systemd_quote(value) -> str:
    """One argument for a systemd ExecStart= line: specifiers and variables escaped, quoted when needed."""
    text = str(value).replace("%", "%%").replace("$", "$$")
    if not any(ch in text for ch in " \t\n\"'\\;"):
        return text
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def to_bool(value):
    """Ansible's `bool`; None stays None. Ansible reads any other value as false: here it is an error, since
    `'maybe' | bool` is a mistake to fix, not a no."""
    if value is None:
        return None
    result = boolean(value)
    if result is None:
        raise FilterError(f"bool: {value!r} is not a boolean (yes/no, true/false, on/off, 1/0)")
    return result


def to_json(value, **kwargs) -> str:
    return json.dumps(value, **kwargs)


def to_nice_json(value, indent=4, sort_keys=True, **kwargs) -> str:
    kwargs.pop("separators", None)
    return json.dumps(value, indent=indent, sort_keys=sort_keys, separators=(",", ": "), **kwargs)


class _YamlDumper(yaml.SafeDumper):
    """Safe YAML output that also takes the dict and list subclasses that tritonfleet's YAML loader makes."""


_YamlDumper.add_multi_representer(dict, yaml.SafeDumper.represent_dict)
_YamlDumper.add_multi_representer(list, yaml.SafeDumper.represent_list)


def to_yaml(value, **kwargs) -> str:
    kwargs.setdefault("default_flow_style", None)
    return yaml.dump(value, Dumper=_YamlDumper, allow_unicode=True, **kwargs)


def to_nice_yaml(value, indent=4, **kwargs) -> str:
    return yaml.dump(value, Dumper=_YamlDumper, indent=indent, allow_unicode=True, default_flow_style=False,
                     **kwargs)


def from_yaml(value):
    return yaml.safe_load(value) if isinstance(value, str) else value


def ternary(value, true_val, false_val, none_val=None):
    if value is None and none_val is not None:
        return none_val
    return true_val if value else false_val


def _regex_flags(ignorecase=False, multiline=False) -> int:
    return (re.I if ignorecase else 0) | (re.M if multiline else 0)


def regex_replace(value="", pattern="", replacement="", ignorecase=False, multiline=False, count=0,
                  mandatory_count=0) -> str:
    output, subs = re.compile(pattern, _regex_flags(ignorecase, multiline)).subn(replacement, str(value), count=count)
    if mandatory_count and mandatory_count != subs:
        raise FilterError(f"regex_replace: {pattern!r} should match {mandatory_count} times, but matches {subs} "
                          f"times in {str(value)!r}")
    return output


def regex_search(value, regex, *groups, ignorecase=False, multiline=False):
    """The first match of `regex`, or with `'\\1'` / `'\\g<name>'` arguments the list of those groups."""
    wanted = []
    for group in groups:
        named, numbered = re.match(r"\\g<(\S+)>", str(group)), re.match(r"\\(\d+)", str(group))
        if not (named or numbered):
            raise FilterError(f"regex_search: unknown argument {group!r} (give groups as '\\\\1' or '\\\\g<name>')")
        wanted.append(named.group(1) if named else int(numbered.group(1)))
    match = re.search(regex, str(value), _regex_flags(ignorecase, multiline))
    if match is None:
        return None
    return [match.group(g) for g in wanted] if wanted else match.group()


def regex_findall(value, regex, multiline=False, ignorecase=False) -> list:
    return re.findall(regex, str(value), _regex_flags(ignorecase, multiline))


def regex_escape(value, re_type="python") -> str:
    if re_type != "python":
        raise FilterError(f"regex_escape: re_type {re_type!r} is not supported (python)")
    return re.escape(str(value))


def mandatory(value, msg=None):
    if isinstance(value, jinja2.Undefined):
        name = f"'{value._undefined_name}' " if value._undefined_name is not None else ""
        raise FilterError(str(msg) if msg is not None else f"Mandatory variable {name}not defined.")
    return value


def quote(value) -> str:
    return shlex.quote("" if value is None else str(value))


def b64encode(value, encoding="utf-8") -> str:
    return base64.b64encode(str(value).encode(encoding)).decode()


def b64decode(value, encoding="utf-8") -> str:
    return base64.b64decode(str(value).encode()).decode(encoding)


def flatten(items, levels=None, skip_nulls=True) -> list:
    flat = []
    for item in items:
        if skip_nulls and item in (None, "None", "null"):
            continue
        if isinstance(item, (list, tuple)) and (levels is None or levels >= 1):
            flat += flatten(item, None if levels is None else int(levels) - 1, skip_nulls)
        else:
            flat.append(item)
    return flat


def _merged_lists(low: list, high: list, list_merge: str) -> list:
    if list_merge == "keep":
        return low
    if list_merge in ("append", "prepend"):
        return low + high if list_merge == "append" else high + low
    if list_merge in ("append_rp", "prepend_rp"):
        rest = [x for x in low if x not in high]
        return rest + high if list_merge == "append_rp" else high + rest
    return high


def merge_hash(low: Mapping, high: Mapping, recursive: bool, list_merge: str) -> dict:
    """`high` merged into a copy of `low` (Ansible's merge_hash): mappings merge when recursive, lists per
    `list_merge`, any other value of `high` wins."""
    merged = dict(low)
    for key, new in high.items():
        old = merged.get(key)
        if key in merged and isinstance(old, Mapping) and isinstance(new, Mapping):
            merged[key] = merge_hash(old, new, recursive, list_merge) if recursive else new
        elif key in merged and isinstance(old, list) and isinstance(new, list):
            merged[key] = _merged_lists(old, new, list_merge)
        else:
            merged[key] = new
    return merged


def combine(*terms, recursive=False, list_merge="replace") -> dict:
    """Mappings merged left to right, the last winning; `[a, b] | combine` works too."""
    if list_merge not in LIST_MERGES:
        raise FilterError(f"combine: list_merge must be one of {', '.join(LIST_MERGES)}, got {list_merge!r}")
    mappings = flatten(terms, levels=1)
    for item in mappings:
        if not isinstance(item, Mapping):
            raise FilterError(f"combine: expects mappings, got {type(item).__name__} {item!r}")
    if not mappings:
        return {}
    result = mappings[-1]
    for mapping in reversed(mappings[:-1]):  # merged high to low priority, as Ansible does
        result = merge_hash(mapping, result, recursive, list_merge)
    return result


def dict2items(mapping, key_name="key", value_name="value") -> list:
    if not isinstance(mapping, Mapping):
        raise FilterError(f"dict2items requires a dictionary, got {type(mapping).__name__} instead.")
    return [{key_name: k, value_name: v} for k, v in mapping.items()]


def items2dict(items, key_name="key", value_name="value") -> dict:
    if not isinstance(items, (list, tuple)):
        raise FilterError(f"items2dict requires a list, got {type(items).__name__} instead.")
    try:
        return {item[key_name]: item[value_name] for item in items}
    except (KeyError, TypeError):
        raise FilterError(f"items2dict requires a list of dictionaries with the keys '{key_name}' and "
                          f"'{value_name}', got {items!r} instead.") from None


def path_join(paths) -> str:
    return os.path.join(paths) if isinstance(paths, str) else os.path.join(*paths)


def truthy(value, convert_bool=False) -> bool:
    converted = boolean(value) if convert_bool else None
    return bool(value) if converted is None else converted


def falsy(value, convert_bool=False) -> bool:
    return not truthy(value, convert_bool)


def regex(value="", pattern="", ignorecase=False, multiline=False, match_type="search") -> bool:
    if match_type not in ("match", "search", "fullmatch"):
        raise FilterError(f"regex: match_type must be match, search or fullmatch, got {match_type!r}")
    compiled = re.compile(pattern, _regex_flags(ignorecase, multiline))
    return bool(getattr(compiled, match_type)(str(value)))


def match(value, pattern="", ignorecase=False, multiline=False) -> bool:
    return regex(value, pattern, ignorecase, multiline, "match")


def search(value, pattern="", ignorecase=False, multiline=False) -> bool:
    return regex(value, pattern, ignorecase, multiline, "search")


def loose_version(text: str) -> list:
    """distutils' LooseVersion, which Ansible's `version` test uses by default: numbers compare as numbers,
    lower-case letters as text, dots separate."""
    return [int(p) if p.isdecimal() else p for p in _LOOSE_VERSION_PART.split(text) if p and p != "."]


def version_compare(value, version, operator="eq", strict=None, version_type=None) -> bool:
    """Ansible's `version` test (`v is version('2.0', '>=')`), loose versions only."""
    if strict or version_type not in (None, "loose"):
        raise FilterError("version: only loose version comparison is available in tritonfleet "
                          f"(asked for {'strict' if strict else version_type!r})")
    if not value:
        raise FilterError("version: Input version value cannot be empty")
    if not version:
        raise FilterError("version: Version parameter to compare against cannot be empty")
    if operator not in VERSION_OPERATORS:
        raise FilterError(f"version: invalid operator {operator!r}: use one of {', '.join(VERSION_OPERATORS)}")
    try:
        return VERSION_OPERATORS[operator](loose_version(str(value)), loose_version(str(version)))
    except TypeError:
        raise FilterError(f"version: cannot compare {str(value)!r} with {str(version)!r}: one has a number where "
                          "the other has letters") from None


def subset(a, b) -> bool:
    return set(a) <= set(b)


def superset(a, b) -> bool:
    return set(a) >= set(b)


FILTERS = {
    "systemd_quote": systemd_quote, "bool": to_bool, "ternary": ternary, "mandatory": mandatory,
    "to_json": to_json, "to_nice_json": to_nice_json, "from_json": json.loads,
    "to_yaml": to_yaml, "to_nice_yaml": to_nice_yaml, "from_yaml": from_yaml,
    "regex_replace": regex_replace, "regex_search": regex_search, "regex_findall": regex_findall,
    "regex_escape": regex_escape, "basename": os.path.basename, "dirname": os.path.dirname, "path_join": path_join,
    "quote": quote, "b64encode": b64encode, "b64decode": b64decode, "split": str.split,
    "combine": combine, "dict2items": dict2items, "items2dict": items2dict, "flatten": flatten,
}
TESTS = {
    "truthy": truthy, "falsy": falsy, "match": match, "search": search, "regex": regex,
    "version": version_compare, "version_compare": version_compare,
    "subset": subset, "issubset": subset, "superset": superset, "issuperset": superset,
}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters.update(FILTERS)
    env.tests.update(TESTS)
    return env


JINJA = _environment()


@functools.lru_cache(maxsize=512)
def compiled_template(source: str) -> jinja2.Template:
    """A template compiled once per run, not once per host and step (compiling is most of rendering)."""
    return JINJA.from_string(source)


@functools.lru_cache(maxsize=512)
def compiled_expression(source: str):
    return JINJA.compile_expression(source, undefined_to_none=False)


def render_text(source: str, context: dict) -> str:
    """`source` rendered to text; RenderError when it fails."""
    try:
        return compiled_template(source).render(context)
    except Exception as exc:  # the template is its author's code: whatever it raises is theirs to fix
        raise RenderError(source, exc) from None


def evaluate(expression: str, context: dict):
    """The value of a bare expression (`port > 10`), of whatever type; RenderError when it fails."""
    try:
        return compiled_expression(expression)(**context)
    except Exception as exc:  # as in render_text
        raise RenderError(expression, exc) from None


def checked_tree(source: str, expression: bool = False) -> nodes.Template:
    """The syntax tree of a template (or of a bare expression, as `when` holds), compiled once so that what
    only the compiler finds is found now. Raises TemplateSyntaxError, also for a filter or test that does not
    exist: Jinja2 itself finds one inside an `{% if %}` branch only when that branch runs."""
    tree = JINJA.parse("{{ (" + source + ") }}" if expression else source)
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        kind, known = ("filter", JINJA.filters) if isinstance(node, nodes.Filter) else ("test", JINJA.tests)
        if node.name not in known:
            close = difflib.get_close_matches(node.name, known, n=3)
            raise jinja2.TemplateAssertionError(
                f"no {kind} named '{node.name}'" + (f" (did you mean {', '.join(close)}?)" if close else ""),
                node.lineno)
    (compiled_expression if expression else compiled_template)(source)
    return tree


def variables_read(tree: nodes.Template) -> set[str]:
    """The variables a template reads from its context."""
    return jinja2.meta.find_undeclared_variables(tree)


def variables_needed(tree: nodes.Template) -> set[str]:
    """The variables a template fails without: those it reads, less those it checks for itself (`x is defined`,
    `x | default(1)`), which it may use bare too (`when: x is defined and x`)."""
    guarded = {n.node.name for n in tree.find_all(nodes.Filter) if n.name in GUARD_FILTERS
               and isinstance(n.node, nodes.Name)}
    guarded |= {n.node.name for n in tree.find_all(nodes.Test) if n.name in GUARD_TESTS
                and isinstance(n.node, nodes.Name)}
    return variables_read(tree) - guarded
