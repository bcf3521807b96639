"""Playbooks in Ansible's shape, loaded and checked completely before any host is touched.

A playbook is a list of plays (`name`, `hosts`, `vars`, `tasks`, `handlers`) or `import_playbook` entries.
A task is `name`, one module with its arguments, and optionally `when`, `tags`, `notify`; `import_tasks`
pulls a list of tasks (or handlers) from another file. `meta: flush_handlers` runs notified handlers there.
Handlers are known by name across the whole run and run once each, at `flush_handlers` or at the end.
Every module's arguments are checked against its spec here (names, types, choices); values that are Jinja2
templates are checked by the runner once rendered.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import jinja2.meta

from tritonfleet.engine.spec import ArgumentError
from tritonfleet.errors import PlaybookError
from tritonfleet.yamlfile import line_of, load_yaml

TASK_KEYWORDS = ("name", "when", "tags", "notify")
PLAY_KEYWORDS = ("name", "hosts", "vars", "tasks", "handlers", "gather_facts")
META_ACTIONS = ("flush_handlers",)


def systemd_quote(value) -> str:
    """One argument for a systemd ExecStart= line: specifiers and variables escaped, quoted when needed."""
    text = str(value).replace("%", "%%").replace("$", "$$")
    if not any(ch in text for ch in " \t\n\"'\\;"):
        return text
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def make_environment() -> jinja2.Environment:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["systemd_quote"] = systemd_quote
    env.filters["bool"] = lambda v: v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes", "on")
    return env


JINJA = make_environment()


@functools.lru_cache(maxsize=512)
def compiled_template(source: str) -> jinja2.Template:
    """A template compiled once per run, not once per host and step (compiling is most of rendering)."""
    return JINJA.from_string(source)


@functools.lru_cache(maxsize=512)
def _compiled_expression(source: str):
    return JINJA.compile_expression(source, undefined_to_none=False)


@dataclass
class Task:
    name: str
    module: str
    args: dict
    when: list
    tags: tuple
    notify: tuple
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Play:
    name: str
    hosts: str
    vars: dict
    tasks: list
    handlers: list
    file: str
    line: int


@dataclass
class Playbook:
    path: Path
    plays: list = field(default_factory=list)

    @property
    def handlers(self) -> dict[str, Task]:
        """All handlers of the run by name (a name defined twice must mean the same step)."""
        found: dict[str, Task] = {}
        for play in self.plays:
            for handler in play.handlers:
                found.setdefault(handler.name, handler)
        return found

    def modules_used(self) -> set[str]:
        return {t.module for p in self.plays for t in p.tasks + p.handlers}


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _check_jinja(text: str, file: str, line: int, known_vars: set[str] | None, expression: bool = False):
    """Compile a template (or `when` expression) now, so bad Jinja2 fails before any host is touched."""
    try:
        source = "{{ (" + text + ") }}" if expression else text
        ast = JINJA.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise PlaybookError(f"bad Jinja2 in {text!r}: {exc.message}", file=file, line=line,
                            hint="fix the expression (balanced braces, valid filters)") from None
    if known_vars is not None:
        unknown = sorted(jinja2.meta.find_undeclared_variables(ast) - known_vars)
        if unknown:
            raise PlaybookError(f"undefined variable(s) {', '.join(unknown)} in {text!r}", file=file, line=line,
                                hint="define them in the inventory (group_vars/host_vars) or the play's vars")


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _load_tasks(items, file: Path, modules: dict, seen: tuple) -> list[Task]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise PlaybookError("tasks/handlers must be a list of steps", file=str(file), line=line_of(items))
    tasks: list[Task] = []
    for item in items:
        if not isinstance(item, dict):
            raise PlaybookError(f"a step must be a mapping, got {item!r}", file=str(file), line=line_of(items))
        line = line_of(item) or 0
        if "import_tasks" in item:
            target = (file.parent / str(item["import_tasks"])).resolve()
            if target in seen:
                raise PlaybookError(f"import_tasks loops back to {target}", file=str(file), line=line)
            data = load_yaml(target, PlaybookError)
            tasks += _load_tasks(data, target, modules, seen + (target,))
            continue
        module_keys = [k for k in item if k not in TASK_KEYWORDS]
        if len(module_keys) != 1:
            what = "no module" if not module_keys else f"several modules ({', '.join(map(str, module_keys))})"
            raise PlaybookError(f"step has {what}", file=str(file), line=line,
                                hint=f"give exactly one of: {', '.join(sorted(modules))}, meta")
        module = module_keys[0]
        args = item[module]
        if module == "meta":
            if args not in META_ACTIONS:
                raise PlaybookError(f"unknown meta action {args!r}", file=str(file), line=line_of(item, module),
                                    hint=f"use one of {', '.join(META_ACTIONS)}")
            args = {"action": args}
        else:
            if module not in modules:
                raise PlaybookError(f"unknown module '{module}'", file=str(file), line=line_of(item, module),
                                    hint=f"known modules: {', '.join(sorted(modules))}")
            args = {} if args is None else args
            if not isinstance(args, dict):
                raise PlaybookError(f"arguments of '{module}' must be a mapping", file=str(file),
                                    line=line_of(item, module))
            try:
                modules[module].checked_args(args, rendered=False)
            except ArgumentError as exc:
                arg_line = line_of(args, exc.arg) if exc.arg else line_of(item, module)
                raise PlaybookError(exc.message, file=str(file), line=arg_line or line, hint=exc.hint) from None
        name = str(item.get("name") or module)
        tasks.append(Task(name=name, module=module, args=dict(args), when=_as_list(item.get("when")),
                          tags=tuple(str(t) for t in _as_list(item.get("tags"))),
                          notify=tuple(str(n) for n in _as_list(item.get("notify"))),
                          file=str(file), line=line))
    return tasks


def _load_plays(path: Path, modules: dict, seen: tuple) -> list[Play]:
    data = load_yaml(path, PlaybookError)
    if not isinstance(data, list):
        raise PlaybookError("a playbook must be a list of plays", file=str(path), line=line_of(data) or 1,
                            hint="start each play with `- name: ...` and give it `hosts:` and `tasks:`")
    plays: list[Play] = []
    for entry in data:
        if not isinstance(entry, dict):
            raise PlaybookError(f"a play must be a mapping, got {entry!r}", file=str(path), line=line_of(data))
        line = line_of(entry) or 0
        if "import_playbook" in entry:
            target = (path.parent / str(entry["import_playbook"])).resolve()
            if target in seen:
                raise PlaybookError(f"import_playbook loops back to {target}", file=str(path), line=line)
            plays += _load_plays(target, modules, seen + (target,))
            continue
        unknown = [k for k in entry if k not in PLAY_KEYWORDS]
        if unknown:
            raise PlaybookError(f"play has unknown key(s) {', '.join(map(str, unknown))}", file=str(path),
                                line=line_of(entry, unknown[0]), hint=f"a play takes {', '.join(PLAY_KEYWORDS)}")
        if "hosts" not in entry:
            raise PlaybookError("play has no `hosts`", file=str(path), line=line,
                                hint="add `hosts: all` or a group name")
        play_vars = entry.get("vars") or {}
        if not isinstance(play_vars, dict):
            raise PlaybookError("play vars must be a mapping", file=str(path), line=line_of(entry, "vars"))
        plays.append(Play(name=str(entry.get("name") or path.stem), hosts=str(entry["hosts"]), vars=dict(play_vars),
                          tasks=_load_tasks(entry.get("tasks"), path, modules, seen),
                          handlers=_load_tasks(entry.get("handlers"), path, modules, seen),
                          file=str(path), line=line))
    return plays


def load_playbook(path: str | Path, modules: dict, known_vars: set[str] | None = None) -> Playbook:
    """Load a playbook with its imports and check it all: modules, arguments, notify targets, Jinja2.

    `known_vars` (names any host will have) lets undefined variables be reported now rather than mid-run.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise PlaybookError("playbook not found", file=str(path))
    book = Playbook(path, _load_plays(path, modules, (path,)))
    handlers = book.handlers
    for play in book.plays:
        names = (known_vars | set(play.vars)) if known_vars is not None else None
        for text in _strings(play.vars):
            _check_jinja(text, play.file, play.line, names)
        for task in play.tasks + play.handlers:
            for text in _strings(task.args):
                _check_jinja(text, task.file, task.line, names)
            for cond in task.when:
                _check_jinja(str(cond), task.file, task.line, names, expression=True)
            for target in task.notify:
                if target not in handlers:
                    raise PlaybookError(f"step '{task.name}' notifies '{target}', which no play defines",
                                        file=task.file, line=task.line,
                                        hint=f"defined handlers: {', '.join(handlers) or '(none)'}")
    return book


def render(value, context: dict):
    """Render every string in a value (args of a step) with Jinja2; a lone `{{ x }}` keeps x's type."""
    if isinstance(value, str):
        if "{{" not in value and "{%" not in value:
            return value
        stripped = value.strip()
        if stripped.startswith("{{") and stripped.endswith("}}") and stripped.count("{{") == 1:
            return _compiled_expression(stripped[2:-2].strip())(**context)
        return compiled_template(value).render(context)
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


def evaluate_when(conditions: list, context: dict) -> bool:
    for cond in conditions:
        if isinstance(cond, bool):
            ok = cond
        else:
            ok = bool(_compiled_expression(str(cond))(**context))
        if not ok:
            return False
    return True

