"""Validate a Triton model repository on the control machine before it is pushed to any host.

Every problem found is collected and reported at once, each naming the model, the file, the line
(where one applies) and what to do about it, so a user fixes a repository in one round instead of
one deploy per mistake. Configs are parsed with Triton's own schema (`ModelConfig` from tritonclient)
and protobuf's text format, so unknown fields and invalid `TYPE_*` values are caught exactly as the
server would catch them.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format

from tritonfleet.errors import TritonfleetError


def _model_config_schema():
    """tritonclient's `model_config_pb2`, loaded without running `tritonclient.grpc`'s __init__.

    That __init__ imports grpc and numpy, a quarter of the start-up of every run, only to validate
    configs before any host is touched. The module is registered under its own name, so a later
    `import tritonclient.grpc` (the smoke test) reuses it instead of loading the schema twice.
    """
    name = "tritonclient.grpc.model_config_pb2"
    if name not in sys.modules:
        package = importlib.util.find_spec("tritonclient")
        path = Path(package.origin).parent / "grpc" / "model_config_pb2.py" if package and package.origin else None
        if path is None or not path.is_file():
            importlib.import_module(name)  # another layout: the plain import
        else:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
    return sys.modules[name]


_SCHEMA = _model_config_schema()
DataType, ModelConfig, ModelInstanceGroup = _SCHEMA.DataType, _SCHEMA.ModelConfig, _SCHEMA.ModelInstanceGroup

CONFIG_NAME = "config.pbtxt"

# platform -> backend, as Triton maps them
_PLATFORM_BACKENDS = {
    "ensemble": "ensemble",
    "onnxruntime_onnx": "onnxruntime",
    "tensorrt_plan": "tensorrt",
    "pytorch_libtorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
}
# default model file per backend (Triton's defaults), used to infer a missing backend
_DEFAULT_MODEL_FILES = {
    "python": "model.py",
    "onnxruntime": "model.onnx",
    "tensorrt": "model.plan",
    "pytorch": "model.pt",
    "tensorflow": "model.savedmodel",
    "openvino": "model.xml",
}
# Files and folders that never matter to Triton and are left out of the digest.
_IGNORED_NAMES = {"__pycache__", ".DS_Store"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the repository."""

    model: str | None
    file: str
    line: int | None
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        who = f"model '{self.model}': " if self.model else ""
        fix = f" (fix: {self.hint})" if self.hint else ""
        return f"{where}{who}{self.message}{fix}"


class ModelRepositoryError(TritonfleetError):
    """The model repository has problems; `.problems` lists every one of them."""

    def __init__(self, path: str | Path, problems: list[Problem]):
        self.problems = list(problems)
        n = len(self.problems)
        super().__init__(f"model repository {path} has {n} problem{'s' if n != 1 else ''}",
                         file=str(path))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    config: ModelConfig = field(compare=False)
    versions: tuple[int, ...]
    backend: str  # "python", "ensemble", "onnxruntime", ...
    # KIND_* of every instance_group; "KIND_AUTO" when a model has none (Triton then picks KIND_GPU
    # if the host has a GPU, else KIND_CPU); empty for ensembles, which have no instances.
    instance_kinds: frozenset[str]
    # Python minor version of the packed environment named by EXECUTION_ENV_PATH ("" when none): the
    # stub runs the model inside it, so it must match the stub's (the host's) Python.
    execution_env_python: str = ""

    def uses_gpu(self) -> bool:
        """True only when an instance_group explicitly asks for KIND_GPU."""
        return "KIND_GPU" in self.instance_kinds


@dataclass(frozen=True)
class Repository:
    path: Path
    models: dict[str, ModelInfo]
    digest: str  # sha256 over relative paths + contents; stable across machines and runs


# --------------------------------------------------------------------------------------------
# helpers


def _bad_name_reason(name: str) -> str | None:
    """Why `name` cannot be a Triton model name, or None if it can."""
    if not name:
        return "the name is empty"
    if "/" in name or "\\" in name:
        return "the name contains a path separator"
    if name.startswith("."):
        return "the name starts with '.' (hidden folders are not models)"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"the name {name!r} contains control characters (newline, tab, ...)"
    unsafe = sorted({c for c in name if not SHELL_SAFE.match(c)})
    if unsafe:
        return (f"the name contains {' '.join(repr(c) for c in unsafe)}: Triton's Python backend starts its stub "
                "with `bash -c` and the model path unquoted, so a space breaks the model ('Expected 9 arguments') "
                "and quotes, ';', '$(...)' or '`' run as shell commands on the host (seen in the lab)")
    return None


# Characters bash takes literally in an unquoted word (see _bad_name_reason; also for the repository path)
SHELL_SAFE = re.compile(r"[A-Za-z0-9_.+@=,:%/-]")


def _strip_comment(line: str) -> str:
    """A config line without its `#` comment (a `#` inside a string literal is kept)."""
    out, quote, escaped = [], None, False
    for c in line:
        if quote:
            out.append(c)
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
            out.append(c)
        elif c == "#":
            break
        else:
            out.append(c)
    return "".join(out)


def _field_lines(text: str, field_name: str, top_level_only: bool = False) -> list[int]:
    """1-based line numbers where `field_name:` (or `field_name {`) appears in a text-format config."""
    pattern = re.compile(r"(?:^|[\s{\[,;<])" + re.escape(field_name) + r"\s*[:{<\[]")
    lines, depth = [], 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw)
        # approximate: depth at the start of the line is good enough to tell top-level fields
        if pattern.search(line) and (not top_level_only or depth == 0):
            lines.append(number)
        no_strings = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", line)
        depth += no_strings.count("{") + no_strings.count("<") - no_strings.count("}") - no_strings.count(">")
    return lines


def _literal_line(text: str, literal: str, start: int = 1) -> int | None:
    """First line at or after `start` holding the string literal "literal"."""
    needle = '"' + literal.replace("\\", "\\\\").replace('"', '\\"') + '"'
    for number, raw in enumerate(text.splitlines(), start=1):
        if number >= start and needle in _strip_comment(raw):
            return number
    return None


def _nth(lines: list[int], index: int) -> int | None:
    return lines[index] if 0 <= index < len(lines) else None


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# validation


class _Collector:
    def __init__(self, shown_root: Path):
        self.shown_root = shown_root
        self.problems: list[Problem] = []

    def add(self, model: str | None, rel: str | Path, line: int | None, message: str, hint: str = "") -> None:
        shown = str(self.shown_root / rel) if str(rel) not in ("", ".") else str(self.shown_root)
        self.problems.append(Problem(model, shown, line, message, hint))


def _check_symlinks(root: Path, shown: _Collector) -> set[Path]:
    """Report symlinks that leave the repository (or dangle); return the bad ones (relative paths)."""
    bad: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for entry in sorted(dirnames + filenames):
            full = Path(dirpath) / entry
            if not full.is_symlink():
                continue
            rel = full.relative_to(root)
            model = rel.parts[0]
            target = os.readlink(full)
            try:
                resolved = full.resolve(strict=True)
            except (OSError, RuntimeError):
                shown.add(model, rel, None, f"symlink to {target!r} is dangling or loops",
                          "point the link at a file inside the repository, or replace it with the file")
                bad.add(rel)
                continue
            if not _is_within(resolved, root):
                shown.add(model, rel, None,
                          f"symlink points outside the repository (to {resolved})",
                          "copy the file into the model folder instead of linking to it; only the "
                          "repository is pushed to hosts")
                bad.add(rel)
    return bad


def _parse_config(folder: str, rel: Path, text: str, shown: _Collector) -> ModelConfig | None:
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        line = exc.GetLine() if hasattr(exc, "GetLine") else None
        column = exc.GetColumn() if hasattr(exc, "GetColumn") else None
        message = str(exc)
        # protobuf prefixes "L:C : "; keep only the reason
        message = re.sub(r"^\d+:\d+\s*:\s*", "", message)
        where = f" (column {column})" if column else ""
        shown.add(folder, rel, line, f"config.pbtxt does not parse{where}: {message}",
                  "fix the syntax; field names and TYPE_*/KIND_* values are those of Triton's "
                  "model_config.proto")
        return None
    return config


def _backend_of(config: ModelConfig, model_dir: Path, versions: list[int]) -> str:
    if config.platform == "ensemble":
        return "ensemble"
    if config.backend:
        return config.backend
    if config.platform:
        return _PLATFORM_BACKENDS.get(config.platform, config.platform)
    for backend, filename in _DEFAULT_MODEL_FILES.items():
        for v in versions:
            if (model_dir / str(v) / filename).exists():
                return backend
    return ""


def _check_model(folder: str, model_dir: Path, root: Path, shown: _Collector,
                 bad_links: set[Path]) -> tuple[ModelInfo | None, str]:
    """Validate one model folder; returns its info (None when the config is unusable) and the config text."""
    config_rel = Path(folder) / CONFIG_NAME
    config_path = model_dir / CONFIG_NAME

    # versions: numeric folders (Triton ignores others, with a warning)
    versions = sorted(int(p.name) for p in model_dir.iterdir()
                      if p.is_dir() and p.name.isdigit() and int(p.name) > 0)
    if config_rel in bad_links:
        # reported with the symlinks; never read what lies outside the repository
        if not versions:
            shown.add(folder, folder, None, "no numeric version folder (e.g. 1/)", f"put the model files in {folder}/1/")
        return None, ""

    if not config_path.is_file():
        shown.add(folder, config_rel, None, "config.pbtxt is missing",
                  f"write {config_rel} with at least `backend: \"python\"` (or `platform`), the inputs and outputs")
        if not versions:
            shown.add(folder, folder, None, "no numeric version folder (e.g. 1/)",
                      f"put the model files in {folder}/1/")
        return None, ""
    try:
        text = config_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        shown.add(folder, config_rel, None, f"config.pbtxt is not UTF-8 text ({exc.reason} at byte {exc.start})",
                  "save the file as UTF-8")
        return None, ""
    except OSError as exc:
        shown.add(folder, config_rel, None, f"config.pbtxt cannot be read: {exc.strerror}",
                  "check the file's permissions")
        return None, ""

    config = _parse_config(folder, config_rel, text, shown)
    if not versions:
        shown.add(folder, folder, None, "no numeric version folder (e.g. 1/): Triton reports "
                  f"'at least one version must be available under the version policy of model '{folder}''",
                  f"put the model files in {folder}/1/" + ("" if config is None or config.platform != "ensemble"
                                                            else " (an ensemble needs an empty 1/ folder)"))
    if config is None:
        return None, text

    name = config.name or folder
    if config.name and config.name != folder:
        shown.add(folder, config_rel, _nth(_field_lines(text, "name", top_level_only=True), 0),
                  f"name \"{config.name}\" does not match its folder \"{folder}\"",
                  f"set name: \"{folder}\" or rename the folder to {config.name!r}")
    elif config.name:
        reason = _bad_name_reason(config.name)
        if reason:
            shown.add(folder, config_rel, _nth(_field_lines(text, "name", top_level_only=True), 0),
                      f"invalid model name: {reason}", "use letters, digits, '_', '-' and '.'")

    # version policy naming versions that are not there
    if config.version_policy.WhichOneof("policy_choice") == "specific":
        missing = [v for v in config.version_policy.specific.versions if v not in versions]
        if missing:
            shown.add(folder, config_rel, _nth(_field_lines(text, "version_policy"), 0),
                      f"version_policy names version(s) {missing} that have no folder",
                      "create the version folders or fix the policy")

    backend = _backend_of(config, model_dir, versions)
    if not backend:
        shown.add(folder, config_rel, None, "neither `backend` nor `platform` is set and no model file "
                  "tells which backend to use", 'add backend: "python" (or the backend the model needs)')

    # tensors: names and datatypes
    for kind, tensors in (("input", config.input), ("output", config.output)):
        seen: set[str] = set()
        field_lines = _field_lines(text, kind)
        for i, tensor in enumerate(tensors):
            line = _literal_line(text, tensor.name, _nth(field_lines, 0) or 1) if tensor.name else _nth(field_lines, 0)
            if not tensor.name:
                shown.add(folder, config_rel, line, f"an {kind} has no name", f"give every {kind} a name")
            elif tensor.name in seen:
                shown.add(folder, config_rel, line, f"{kind} \"{tensor.name}\" is declared twice",
                          f"give every {kind} a distinct name")
            seen.add(tensor.name)
            if tensor.data_type == DataType.TYPE_INVALID:
                shown.add(folder, config_rel, line, f"{kind} \"{tensor.name}\" has no data_type",
                          "set data_type: TYPE_FP32 (or another TYPE_* value)")

    # model files
    if backend == "python":
        filename = config.default_model_filename or "model.py"
        for v in versions:
            model_file = model_dir / str(v) / filename
            rel = Path(folder) / str(v) / filename
            if rel in bad_links or any(parent in bad_links for parent in rel.parents):
                continue  # reported with the symlinks
            if not model_file.is_file():
                shown.add(folder, rel, None, f"{filename} is missing in version folder {v}/",
                          f"put the Python model (a TritonPythonModel class) in {rel}")
                continue
            try:
                source = model_file.read_bytes()
                compile(source, str(rel), "exec", dont_inherit=True)
            except SyntaxError as exc:
                shown.add(folder, rel, exc.lineno, f"Python syntax error: {exc.msg}",
                          "fix the model code; the server would report the model UNAVAILABLE")
            except (OSError, ValueError) as exc:
                shown.add(folder, rel, None, f"cannot read the model: {exc}", "check the file")

    # instance kinds
    if backend == "ensemble":
        kinds: frozenset[str] = frozenset()
    elif config.instance_group:
        kinds = frozenset(ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group)
    else:
        kinds = frozenset({"KIND_AUTO"})

    env_python = _check_execution_env(folder, model_dir, config, config_rel, text, shown) if backend == "python" else ""
    info = ModelInfo(name=name, path=model_dir, config=config, versions=tuple(versions),
                     backend=backend, instance_kinds=kinds, execution_env_python=env_python)
    return info, text


_ENV_PYTHON = re.compile(r"^(?:\./)?lib/python(3\.\d+)/")
# What `python -m venv` writes into bin/activate: the absolute folder it was made in.
_HARDCODED_VENV = re.compile(r"^\s*(?:export\s+)?VIRTUAL_ENV=[\"']?(/[^\"'\s]*)", re.MULTILINE)
# The line that makes a venv's bin/activate find its own folder, wherever Triton extracts it (conda-pack's does so).
RELOCATABLE_VIRTUAL_ENV = 'VIRTUAL_ENV="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"'


def _check_execution_env(folder: str, model_dir: Path, config: ModelConfig, config_rel: Path, text: str,
                         shown: "_Collector") -> str:
    """EXECUTION_ENV_PATH: a packed environment inside the model folder, with bin/activate; its Python version."""
    if "EXECUTION_ENV_PATH" not in config.parameters:
        return ""
    value = config.parameters["EXECUTION_ENV_PATH"].string_value
    line = _literal_line(text, "EXECUTION_ENV_PATH") or None
    if not value.startswith("$$TRITON_MODEL_DIRECTORY/"):
        shown.add(folder, config_rel, line, f"EXECUTION_ENV_PATH {value!r} is outside the model folder, so it "
                  "would not be pushed with the model",
                  'put the archive in the model folder and use "$$TRITON_MODEL_DIRECTORY/<archive>.tar.gz"')
        return ""
    archive = model_dir / value[len("$$TRITON_MODEL_DIRECTORY/"):]
    rel = Path(folder) / archive.relative_to(model_dir)
    if not archive.is_file():
        shown.add(folder, rel, None, "the EXECUTION_ENV_PATH archive is missing",
                  "pack the environment (conda-pack) into that file")
        return ""
    import tarfile
    activate = None
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            names = [m.name for m in members]
            member = next((m for m in members if m.name.lstrip("./") == "bin/activate" and m.isfile()), None)
            if member is not None:
                activate = tar.extractfile(member).read(1 << 16).decode(errors="replace")
    except (tarfile.TarError, OSError) as exc:
        shown.add(folder, rel, None, f"the EXECUTION_ENV_PATH archive cannot be read: {exc}",
                  "pack it again as a .tar.gz (conda-pack)")
        return ""
    if activate is None:
        shown.add(folder, rel, None, "the packed environment has no bin/activate, which Triton sources",
                  "pack a whole environment (conda-pack), not a folder of packages")
    elif built_in := _HARDCODED_VENV.search(activate):
        shown.add(folder, rel, None, f"bin/activate names the folder the environment was made in "
                  f"({built_in.group(1)}); Triton extracts the archive under /tmp/python_env_*/ and sources it "
                  "there, so the model would run without the environment (`No module named ...`)",
                  "pack it with conda-pack, whose activate finds its own folder, or make bin/activate set "
                  f"VIRTUAL_ENV from its own location: {RELOCATABLE_VIRTUAL_ENV}")
    versions = sorted({m.group(1) for m in map(_ENV_PYTHON.match, names) if m})
    if len(versions) != 1:
        shown.add(folder, rel, None, "cannot tell the packed environment's Python version "
                  f"(found {versions or 'no lib/python3.X'})", "pack an environment with exactly one Python")
        return ""
    return versions[0]


def _check_ensemble(info: ModelInfo, text: str, models: dict[str, ModelInfo], broken: set[str],
                    shown: _Collector) -> None:
    folder = info.path.name
    config_rel = Path(folder) / CONFIG_NAME
    config = info.config
    steps = list(config.ensemble_scheduling.step)
    if not steps:
        shown.add(folder, config_rel, _nth(_field_lines(text, "platform"), 0),
                  "ensemble has no ensemble_scheduling steps",
                  "add ensemble_scheduling { step [ { model_name: ... input_map ... output_map ... } ] }")
        return
    step_lines = _field_lines(text, "model_name")
    ensemble_inputs = {t.name for t in config.input}
    producers: dict[str, int] = {}
    for i, step in enumerate(steps):
        for tensor in step.output_map.values():
            if tensor in producers or tensor in ensemble_inputs:
                shown.add(folder, config_rel, _literal_line(text, tensor, _nth(step_lines, i) or 1),
                          f"step {i + 1} ({step.model_name}) writes tensor \"{tensor}\" that is "
                          + ("an ensemble input" if tensor in ensemble_inputs else "already written by another step"),
                          "give every step output its own tensor name")
            producers.setdefault(tensor, i)

    for i, step in enumerate(steps):
        line = _nth(step_lines, i)
        target = models.get(step.model_name)
        if target is None and step.model_name in broken:
            pass  # the step's model exists but its own problems are reported already
        elif target is None:
            shown.add(folder, config_rel, line,
                      f"step {i + 1} names model \"{step.model_name}\" that is not in the repository",
                      f"add a model folder {step.model_name}/ or fix model_name")
        else:
            if step.model_version > 0 and step.model_version not in target.versions:
                shown.add(folder, config_rel, line,
                          f"step {i + 1} asks for version {step.model_version} of \"{step.model_name}\", "
                          f"which has versions {list(target.versions)}",
                          "use model_version: -1 (latest) or an existing version")
            target_inputs = {t.name for t in target.config.input}
            target_outputs = {t.name for t in target.config.output}
            for key in step.input_map:
                if target_inputs and key not in target_inputs:
                    shown.add(folder, config_rel, _literal_line(text, key, line or 1),
                              f"step {i + 1} maps \"{key}\", which is not an input of \"{step.model_name}\" "
                              f"(inputs: {', '.join(sorted(target_inputs))})",
                              "input_map keys are the step model's input names")
            for key in step.output_map:
                if target_outputs and key not in target_outputs:
                    shown.add(folder, config_rel, _literal_line(text, key, line or 1),
                              f"step {i + 1} maps \"{key}\", which is not an output of \"{step.model_name}\" "
                              f"(outputs: {', '.join(sorted(target_outputs))})",
                              "output_map keys are the step model's output names")
        for tensor in step.input_map.values():
            if tensor in ensemble_inputs:
                continue
            if tensor not in producers:
                shown.add(folder, config_rel, _literal_line(text, tensor, line or 1),
                          f"step {i + 1} ({step.model_name}) consumes tensor \"{tensor}\" that is neither an "
                          "ensemble input nor produced by any step",
                          "map it from an ensemble input or from an earlier step's output_map")
            elif producers[tensor] == i:
                shown.add(folder, config_rel, _literal_line(text, tensor, line or 1),
                          f"step {i + 1} ({step.model_name}) consumes tensor \"{tensor}\" that it produces itself",
                          "break the cycle")

    # every ensemble output must come from some step
    output_lines = _field_lines(text, "output", top_level_only=True)
    for tensor in config.output:
        if tensor.name not in producers:
            shown.add(folder, config_rel, _literal_line(text, tensor.name, _nth(output_lines, 0) or 1),
                      f"ensemble output \"{tensor.name}\" is not produced by any step",
                      "map a step's output to it in output_map")

    # cycles between steps (Triton orders steps by data flow, not by position)
    deps = {i: {producers[t] for t in s.input_map.values() if t in producers and producers[t] != i}
            for i, s in enumerate(steps)}
    state: dict[int, int] = {}

    def visit(n: int, depth: int = 0) -> bool:
        if state.get(n) == 1:
            return True
        if state.get(n) == 2 or depth > len(steps):
            return False
        state[n] = 1
        cyclic = any(visit(d, depth + 1) for d in deps[n])
        state[n] = 2
        return cyclic

    if any(visit(i) for i in range(len(steps))):
        shown.add(folder, config_rel, _nth(_field_lines(text, "ensemble_scheduling"), 0),
                  "ensemble steps form a cycle", "make the tensors flow one way from inputs to outputs")


def _check_files(root: Path, shown: "_Collector") -> None:
    """Every file must be a regular file this machine can read (the push copies files, nothing else)."""
    import stat
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if d not in _IGNORED_NAMES]
        for name in filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(root)
            model = rel.parts[0] if len(rel.parts) > 1 else None
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                continue  # checked with the symlinks
            if not stat.S_ISREG(mode):
                shown.add(model, rel, None, "not a regular file (a pipe, socket or device)", "remove it")
            elif not os.access(full, os.R_OK):
                shown.add(model, rel, None, "cannot be read by this user, so it cannot be pushed",
                          "make it readable (chmod a+r) or remove it")


def _digest(root: Path, skip: set[Path]) -> str:
    """sha256 over (relative path, contents) of every file, in a stable order."""
    h = hashlib.sha256()
    entries: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED_NAMES)
        base = Path(dirpath)
        for name in list(dirnames) + filenames:
            full = base / name
            rel = full.relative_to(root)
            if rel in skip or name in _IGNORED_NAMES or name.endswith(".pyc"):
                continue
            if full.is_symlink() or name in filenames:
                entries.append((rel.as_posix(), full))
    for rel, full in sorted(entries):
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
        if full.is_symlink() and full.is_dir():
            data = b"link:" + os.readlink(full).encode("utf-8", "surrogateescape")
        elif full.is_file():
            data = full.read_bytes()
        else:
            data = b""
        h.update(str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()


def validate_repository(path: str | Path) -> Repository:
    """Validate the model repository at `path`; raise ModelRepositoryError listing every problem."""
    shown_root = Path(path)
    shown = _Collector(shown_root)
    if not shown_root.is_dir():
        shown.add(None, "", None, "the model repository is not a folder" if shown_root.exists()
                  else "the model repository does not exist",
                  "pass the folder that holds one sub-folder per model (e.g. examples/models)")
        raise ModelRepositoryError(path, shown.problems)
    root = shown_root.resolve()

    bad_links = _check_symlinks(root, shown)
    _check_files(root, shown)

    infos: list[ModelInfo] = []
    texts: dict[str, str] = {}
    broken: set[str] = set()  # folders whose config could not be used (already reported)
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    for model_dir in folders:
        folder = model_dir.name
        rel = Path(folder)
        if rel in bad_links:
            continue  # already reported
        reason = _bad_name_reason(folder)
        if reason:
            shown.add(folder, rel, None, f"invalid model folder name: {reason}",
                      "rename the folder (letters, digits, '_', '-', '.'), or move it out of the repository")
            continue
        info, text = _check_model(folder, model_dir, root, shown, bad_links)
        if info is not None:
            infos.append(info)
            texts[info.path.name] = text
        else:
            broken.add(folder)

    if not folders and not shown.problems:
        shown.add(None, "", None, "the model repository holds no model folders",
                  "add one folder per model, each with config.pbtxt and a version folder 1/")

    # duplicate names (a config name colliding with another model's)
    models: dict[str, ModelInfo] = {}
    for info in infos:
        other = models.get(info.name)
        if other is not None:
            line = _nth(_field_lines(texts[info.path.name], "name", top_level_only=True), 0)
            shown.add(info.path.name, Path(info.path.name) / CONFIG_NAME, line,
                      f"model name \"{info.name}\" is already used by folder {other.path.name}/",
                      "every model needs a distinct name")
            continue
        models[info.name] = info

    for info in infos:
        if info.backend == "ensemble" and models.get(info.name) is info:
            _check_ensemble(info, texts[info.path.name], models, broken, shown)

    if shown.problems:
        raise ModelRepositoryError(path, shown.problems)
    return Repository(path=root, models=dict(sorted(models.items())), digest=_digest(root, bad_links))
