"""Playbooks in Ansible's shape, loaded and checked completely before any host is touched.

A playbook is a list of plays (`name`, `hosts`, `vars`, `tasks`, `handlers`) or `import_playbook` entries.
A task is `name`, one module with its arguments, and optionally `when`, `tags`, `notify`; `import_tasks`
pulls a list of tasks (or handlers) from another file. `meta: flush_handlers` runs notified handlers there.
Handlers are known by name across the whole run and run once each, at `flush_handlers` or at the end; two
handlers of one name must be the same step. Ansible keywords tritonfleet does not take (`register`, `loop`,
`become`, ...) are refused by name rather than read as modules.

Every module's arguments are checked against its spec here (names, types, choices); values that are Jinja2
templates are checked by the runner once rendered. Every template and `when` is compiled here (syntax, filters,
tests), its variables checked against those every host has, and one that reads no variable is evaluated, so
`{{ 1/0 }}` fails now; a template `src` must exist. A template that fails for one host's values fails that
step, naming the step's file:line.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import jinja2

from tritonfleet.engine.jinja import (JINJA, RenderError, checked_tree, compiled_template, evaluate, render_text,
                                      systemd_quote, variables_needed, variables_read)
from tritonfleet.engine.spec import ArgumentError, is_template
from tritonfleet.errors import PlaybookError
from tritonfleet.paths import REPO_ROOT
from tritonfleet.yamlfile import line_of, load_yaml

# the engine's interface; JINJA, compiled_template and systemd_quote live in engine/jinja.py
__all__ = ["JINJA", "Play", "Playbook", "StepTemplateError", "Task", "compiled_template", "evaluate_when",
           "load_playbook", "render", "systemd_quote", "template_path"]

TASK_KEYWORDS = ("name", "when", "tags", "notify")
PLAY_KEYWORDS = ("name", "hosts", "vars", "tasks", "handlers", "gather_facts")
IMPORT_KEYWORDS = ("name",)  # what an import_playbook / import_tasks entry may hold besides the file
META_ACTIONS = ("flush_handlers",)
TEMPLATES = REPO_ROOT / "templates"  # where the `template` module finds a relative `src`

# Ansible keywords (and include/role actions) a tritonfleet step or play does not take; `with_*` too
ANSIBLE_TASK_KEYWORDS = frozenset((
    "action", "always", "any_errors_fatal", "args", "async", "become", "become_exe", "become_flags",
    "become_method", "become_user", "block", "changed_when", "check_mode", "collections", "connection", "debugger",
    "delay", "delegate_facts", "delegate_to", "diff", "environment", "failed_when", "ignore_errors",
    "ignore_unreachable", "import_role", "include", "include_role", "include_tasks", "include_vars", "listen",
    "local_action", "loop", "loop_control", "module_defaults", "no_log", "poll", "port", "register", "remote_user",
    "rescue", "retries", "run_once", "throttle", "timeout", "until", "vars"))
ANSIBLE_PLAY_KEYWORDS = frozenset((
    "any_errors_fatal", "become", "become_exe", "become_flags", "become_method", "become_user", "check_mode",
    "collections", "connection", "debugger", "diff", "environment", "fact_path", "force_handlers", "gather_subset",
    "gather_timeout", "ignore_errors", "ignore_unreachable", "max_fail_percentage", "module_defaults", "no_log",
    "order", "port", "post_tasks", "pre_tasks", "remote_user", "roles", "run_once", "serial", "strategy", "tags",
    "throttle", "timeout", "vars_files", "vars_prompt"))
INSTEAD = {
    "register": "modules read what they need from the facts gathered when the run starts; a step's result cannot "
                "feed a later step",
    "loop": "write one step per item (a module that takes a list, like `packages: {names: [...]}`, takes them all "
            "in one step)",
    "become": "set `ansible_become: true` for the hosts in the inventory: every command of the run then goes "
              "through sudo",
    "include_tasks": "use `import_tasks`: imported files are loaded and checked before any host is touched",
    "roles": "put the steps in a file of tasks and use `import_tasks`",
}


class StepTemplateError(ArgumentError):
    """A step's template (an argument or its `when`) failed for one host's values. An ArgumentError, so the
    runner fails the step naming its file:line, as it does for a rendered value a module cannot take."""


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

    @property
    def body(self) -> tuple:
        """What the step does, wherever it is written (two handlers of one name must agree on it)."""
        return self.module, self.args, self.when, self.tags, self.notify


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
        """All handlers of the run by name (load_playbook refused a name defined twice as different steps)."""
        found: dict[str, Task] = {}
        for play in self.plays:
            for handler in play.handlers:
                found.setdefault(handler.name, handler)
        return found

    def modules_used(self) -> set[str]:
        return {t.module for p in self.plays for t in p.tasks + p.handlers}


def template_path(src: str) -> Path:
    """The file a `template` step's `src` names: relative to templates/, as Ansible's to a role's templates/."""
    path = Path(src)
    return path if path.is_absolute() else TEMPLATES / path


def lone_expression(text: str) -> str | None:
    """The expression of a text that is one `{{ expr }}` and nothing else (its value keeps its type), else None."""
    stripped = text.strip()
    if stripped.startswith("{{") and stripped.endswith("}}") and stripped.count("{{") == 1:
        return stripped[2:-2].strip()
    return None


def _templates(value):
    """Every template string in a value (args of a step, a play's vars), nested ones included."""
    if is_template(value):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _templates(v)
    elif isinstance(value, list):
        for v in value:
            yield from _templates(v)


def _check_jinja(text: str, file: str, line: int | None, known_vars: set[str] | None, expression: bool = False,
                 what: str | None = None):
    """Compile a template (or `when` expression) now, so bad Jinja2 fails before any host is touched; one that
    reads no variable is evaluated now too, so `{{ 1/0 }}` does. `what` names it in errors (default: its text)."""
    what = what or repr(text)
    try:
        tree = checked_tree(text, expression)
    except jinja2.TemplateSyntaxError as exc:
        raise PlaybookError(f"bad Jinja2 in {what}: {exc.message}", file=file, line=line or exc.lineno,
                            hint="fix the expression (balanced braces, valid filters and tests)") from None
    if known_vars is not None:
        unknown = sorted(variables_needed(tree) - known_vars)
        if unknown:
            raise PlaybookError(f"undefined variable(s) {', '.join(unknown)} in {what}", file=file, line=line,
                                hint="define them in the inventory (group_vars/host_vars) or the play's vars, "
                                     "or give them a `default`")
    if not variables_read(tree):
        try:
            evaluate_when([text], {}) if expression else render(text, {})
        except StepTemplateError as exc:
            raise PlaybookError(exc.message, file=file, line=line, hint=exc.hint) from None


def _check_template_source(task: Task, known_vars: set[str] | None) -> None:
    """A `template` step's source must exist and compile, with the vars every host has (it is rendered with the
    host's vars, not the play's)."""
    src = task.args.get("src")
    if not isinstance(src, str) or is_template(src):
        return
    path = template_path(src)
    where = {"file": task.file, "line": line_of(task.args, "src") or task.line}
    hint = f"a relative `src` is looked up in {TEMPLATES}/; or give an absolute path"
    if not path.is_file():
        raise PlaybookError(f"template {src!r} not found: {path}", **where, hint=hint)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise PlaybookError(f"template {src!r} cannot be read: {path}: {reason}", **where, hint=hint) from None
    _check_jinja(text, str(path), None, known_vars, what="this template")


def _keyword_family(key: str) -> str:
    """The keyword whose advice (INSTEAD) covers `key`: `with_items` is a `loop`, `become_user` a `become`."""
    if key.startswith("with_") or key == "loop_control":
        return "loop"
    if key.startswith("become"):
        return "become"
    return "roles" if key.endswith("_role") else key


def _refuse_ansible_keywords(item: dict, keywords: frozenset, file: Path, default_hint: str) -> None:
    """An Ansible keyword tritonfleet does not take is refused by name, not taken for a second module."""
    for key in item:
        if isinstance(key, str) and (key in keywords or key.startswith("with_")):
            raise PlaybookError(f"`{key}` is not supported by tritonfleet playbooks", file=str(file),
                                line=line_of(item, key), hint=INSTEAD.get(_keyword_family(key), default_hint))


def _import_target(entry: dict, key: str, file: Path) -> Path:
    """The file an `import_playbook` / `import_tasks` entry names, relative to the importing file."""
    line = line_of(entry, key)
    extra = [str(k) for k in entry if k != key and k not in IMPORT_KEYWORDS]
    if extra:
        raise PlaybookError(f"`{extra[0]}` on {key} is not supported by tritonfleet playbooks", file=str(file),
                            line=line_of(entry, extra[0]), hint="put it on the imported steps or plays")
    name = entry[key]
    if not isinstance(name, str) or not name.strip():
        raise PlaybookError(f"{key} needs a file name", file=str(file), line=line,
                            hint=f"write `- {key}: other.yml` (relative to {file.parent})")
    target = (file.parent / name).resolve()
    if not target.is_file():
        raise PlaybookError(f"{key}: {target} not found", file=str(file), line=line,
                            hint=f"the name is relative to the importing file's folder, {file.parent}")
    return target


def _condition(cond, file: Path, line: int, warn: Callable[[str], None]):
    """A `when` condition as the runner evaluates it: a boolean, or an expression without `{{ }}`."""
    if isinstance(cond, bool):
        return cond
    text = str(cond)
    expression = lone_expression(text)
    if expression is not None:  # Ansible accepts it with a warning
        warn(f"{file}:{line}: `when: {text}`: a condition should not include {{{{ }}}}; read as `{expression}`")
        return expression
    if is_template(text):
        raise PlaybookError(f"`when: {text}` mixes an expression with {{{{ }}}} or {{% %}}", file=str(file),
                            line=line, hint="write the condition as a bare expression: `when: x == 'a'`")
    return text


def _load_tasks(items, file: Path, modules: dict, seen: tuple, warn: Callable[[str], None]) -> list[Task]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise PlaybookError("tasks/handlers must be a list of steps", file=str(file), line=line_of(items))
    tasks: list[Task] = []
    step_hint = f"a step takes {', '.join(TASK_KEYWORDS)} and one module"
    for item in items:
        if not isinstance(item, dict):
            raise PlaybookError(f"a step must be a mapping, got {item!r}", file=str(file), line=line_of(items))
        line = line_of(item) or 0
        if "import_tasks" in item:
            target = _import_target(item, "import_tasks", file)
            if target in seen:
                raise PlaybookError(f"import_tasks loops back to {target}", file=str(file), line=line)
            data = load_yaml(target, PlaybookError)
            tasks += _load_tasks(data, target, modules, seen + (target,), warn)
            continue
        _refuse_ansible_keywords(item, ANSIBLE_TASK_KEYWORDS, file, step_hint)
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
        when = [_condition(c, file, line, warn) for c in _as_list(item.get("when"))]
        tasks.append(Task(name=name, module=module, args=args, when=when,
                          tags=tuple(str(t) for t in _as_list(item.get("tags"))),
                          notify=tuple(str(n) for n in _as_list(item.get("notify"))),
                          file=str(file), line=line))
    return tasks


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _load_plays(path: Path, modules: dict, seen: tuple, warn: Callable[[str], None]) -> list[Play]:
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
            target = _import_target(entry, "import_playbook", path)
            if target in seen:
                raise PlaybookError(f"import_playbook loops back to {target}", file=str(path), line=line)
            plays += _load_plays(target, modules, seen + (target,), warn)
            continue
        _refuse_ansible_keywords(entry, ANSIBLE_PLAY_KEYWORDS, path, f"a play takes {', '.join(PLAY_KEYWORDS)}")
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
        plays.append(Play(name=str(entry.get("name") or path.stem), hosts=str(entry["hosts"]), vars=play_vars,
                          tasks=_load_tasks(entry.get("tasks"), path, modules, seen, warn),
                          handlers=_load_tasks(entry.get("handlers"), path, modules, seen, warn),
                          file=str(path), line=line))
    return plays


def _check_handlers(plays: list[Play]) -> None:
    """Handlers are known by name across the run: one name must be one step (one file imported twice is)."""
    first: dict[str, Task] = {}
    for handler in (h for play in plays for h in play.handlers):
        earlier = first.setdefault(handler.name, handler)
        if earlier.body != handler.body:
            raise PlaybookError(f"two handlers are named '{handler.name}' but do different things: {earlier.where} "
                                f"and {handler.where}", file=handler.file, line=handler.line,
                                hint="rename one (and the `notify` meant for it), or make the two the same step")


def _print_warning(text: str) -> None:
    print(f"[WARNING]: {text}", file=sys.stderr)


def load_playbook(path: str | Path, modules: dict, known_vars: set[str] | None = None,
                  warn: Callable[[str], None] = _print_warning) -> Playbook:
    """Load a playbook with its imports and check it all: modules, arguments, notify targets, handlers, Jinja2.

    `known_vars` (names any host will have) lets undefined variables be reported now rather than mid-run.
    `warn` gets each warning once (what Ansible accepts with a warning: `when: "{{ x }}"`).
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise PlaybookError("playbook not found", file=str(path))
    shown: set[str] = set()

    def warn_once(text: str) -> None:
        if text not in shown:
            shown.add(text)
            warn(text)

    book = Playbook(path, _load_plays(path, modules, (path,), warn_once))
    _check_handlers(book.plays)
    handlers = book.handlers
    for play in book.plays:
        names = (known_vars | set(play.vars)) if known_vars is not None else None
        for key, value in play.vars.items():
            for text in _templates(value):
                _check_jinja(text, play.file, line_of(play.vars, key) or play.line, names)
        for task in play.tasks + play.handlers:
            for text in _templates(task.args):
                _check_jinja(text, task.file, task.line, names)
            for cond in task.when:
                if not isinstance(cond, bool):
                    _check_jinja(cond, task.file, task.line, names, expression=True)
            if task.module == "template":
                _check_template_source(task, known_vars)
            for target in task.notify:
                if target not in handlers:
                    raise PlaybookError(f"step '{task.name}' notifies '{target}', which no play defines",
                                        file=task.file, line=task.line,
                                        hint=f"defined handlers: {', '.join(handlers) or '(none)'}")
    return book


def render(value, context: dict):
    """Render every string in a value (args of a step) with Jinja2; a lone `{{ x }}` keeps x's type.
    StepTemplateError when a template fails for these values."""
    if isinstance(value, str):
        if not is_template(value):
            return value
        expression = lone_expression(value)
        try:
            return evaluate(expression, context) if expression is not None else render_text(value, context)
        except RenderError as exc:
            raise StepTemplateError(f"cannot render {value!r}: {exc.reason}", hint=exc.hint) from None
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


def evaluate_when(conditions: list, context: dict) -> bool:
    """Whether every condition holds; StepTemplateError when one cannot be evaluated for these values."""
    for cond in conditions:
        if isinstance(cond, bool):
            ok = cond
        else:
            try:
                ok = bool(evaluate(str(cond), context))
            except RenderError as exc:
                raise StepTemplateError(f"`when: {cond}` cannot be evaluated: {exc.reason}", hint=exc.hint) from None
        if not ok:
            return False
    return True
