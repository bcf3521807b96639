"""Validate a Triton model repository on the control machine before it is pushed to any host.

Every problem found is collected and reported at once, each naming the model, the file, the line
(where one applies) and what to do about it, so a user fixes a repository in one round instead of
one deploy per mistake. Configs are parsed with Triton's own schema (`ModelConfig` from tritonclient)
and protobuf's text format, so unknown fields and invalid `TYPE_*` values are caught exactly as the
server would catch them. The rules Triton itself applies follow its source (triton-inference-server/core,
branch r24.10: tritonserver 2.51), cited beside each one; what the server did with such repositories is in
tests/test_models_server.py.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

from google.protobuf import text_format

from tritonfleet.errors import TritonfleetError
from tritonfleet.triton.digest import IGNORED_NAMES, repository_digest


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
# The backends tritonfleet's bundle ships (bundle.py keeps backends/python only); Triton runs ensembles itself.
DEFAULT_BACKENDS = ("python",)

# Upstream references below are to triton-inference-server/core at branch r24.10, the core of tritonserver 2.51.

# platform -> backend, as AutoCompleteBackendFields fills a missing backend (src/model_config_utils.cc:1038-1191)
_PLATFORM_BACKENDS = {
    "ensemble": "ensemble",
    "onnxruntime_onnx": "onnxruntime",
    "tensorrt_plan": "tensorrt",
    "pytorch_libtorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
}
# model file -> backend, in the order AutoCompleteBackendFields looks for them (src/model_config_utils.cc:1038-1211)
_BACKEND_OF_FILE = {
    "model.savedmodel": "tensorflow",
    "model.graphdef": "tensorflow",
    "model.plan": "tensorrt",
    "model.onnx": "onnxruntime",
    "model.xml": "openvino",
    "model.pt": "pytorch",
    "model.py": "python",
}
# Sub-folders Triton never reads as versions (src/model_repository_manager/model_lifecycle.cc:95-100,
# src/constants.h:76-84).
_NOT_VERSION_FOLDERS = {"warmup", "initial_state", "configs"}
# What std::stoll reads from a folder name: blanks, a sign, ASCII digits; the rest of the name is ignored.
_STOLL = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
_INT64 = range(-(1 << 63), 1 << 63)


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
    versions: tuple[int, ...]  # every version folder Triton reads; its version_policy picks those it loads
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
    digest: str  # sha256 over relative paths + contents; stable across machines and runs (digest.py)


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


def _next_line(lines: list[int], start: int) -> int | None:
    """The first of `lines` at or after line `start`."""
    return next((n for n in lines if n >= start), None)


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


def _version_of_folder(name: str) -> int | None:
    """The version Triton reads from a model's sub-folder name; None for a folder it skips.

    VersionsToLoad (src/model_repository_manager/model_lifecycle.cc:93-113) skips a name with a leading zero
    ("01"), then takes `std::stoll(name)`: ASCII digits only ("²", "١" are skipped with a warning), and only the
    leading digits ("1abc" reads as 1). A number beyond 64 bits throws out_of_range, which is not caught there.
    """
    if name in _NOT_VERSION_FOLDERS or (len(name) > 1 and name[0] == "0"):
        return None
    number = _STOLL.match(name)
    return int(number.group(1)) if number else None


def _why_ignored(name: str) -> str:
    if name[0] == "0":
        return "leading zero"
    if any(c.isdigit() for c in name):
        return "it reads ASCII digits only"
    return "not a number"


@dataclass
class _VersionFolders:
    versions: list[int] = field(default_factory=list)  # sorted
    ignored: list[str] = field(default_factory=list)  # names of the folders Triton skips


def _version_folders(folder: str, model_dir: Path, shown: _Collector) -> _VersionFolders:
    """The versions Triton finds in a model folder; folders it would misread are problems."""
    found = _VersionFolders()
    for sub in sorted(p for p in model_dir.iterdir() if p.is_dir()):
        version = _version_of_folder(sub.name)
        rel = Path(folder) / sub.name
        if version is None:
            if sub.name not in _NOT_VERSION_FOLDERS and sub.name not in IGNORED_NAMES:
                found.ignored.append(sub.name)
        elif version not in _INT64:
            shown.add(folder, rel, None, "version folder too large for Triton's 64-bit versions: its std::stoll throws "
                      "out_of_range, which Triton does not catch, and tritonserver aborts at start (seen with 2.51)",
                      f"rename it to a smaller number, e.g. {folder}/2/")
        elif str(version) != sub.name:
            shown.add(folder, rel, None, f"Triton reads folder {sub.name!r} as version {version} (std::stoll stops at "
                      f"the first non-digit), then loads version {version} from {folder}/{version}/; without that "
                      "folder, tritonserver 2.51 hung in loading (seen)", f"rename it to {version}/, or to a name "
                      "without leading digits if it is not a version")
        else:
            found.versions.append(version)
    found.versions.sort()
    return found


def _no_version_problem(folder: str, found: _VersionFolders, shown: _Collector, ensemble: bool) -> None:
    ignored = "; it ignores " + ", ".join(f"{name}/ ({_why_ignored(name)})" for name in found.ignored)
    numbered = [name for name in found.ignored if _why_ignored(name) != "not a number"]
    shown.add(folder, folder, None, "no numeric version folder (e.g. 1/): Triton reports 'at least one version must "
              f"be available under the version policy of model '{folder}''" + (ignored if found.ignored else ""),
              f"rename {numbered[0]}/ to 1/ (ASCII digits, no leading zero)" if numbered else
              f"put the model files in {folder}/1/" + (" (an ensemble needs an empty 1/ folder)" if ensemble else ""))


def _loaded_versions(config: ModelConfig, versions: list[int]) -> list[int]:
    """The versions Triton loads under the config's version policy (model_lifecycle.cc:116-140); without a
    policy, the latest one (NormalizeModelConfig, src/model_config_utils.cc:727-732)."""
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "specific":
        return sorted(set(policy.specific.versions) & set(versions))
    if choice == "all":
        return list(versions)
    latest = policy.latest.num_versions if choice == "latest" else 1
    return versions[-latest:] if latest > 0 else []


def _check_version_policy(folder: str, config: ModelConfig, text: str, versions: list[int], config_rel: Path,
                          shown: _Collector) -> list[int]:
    """The versions Triton loads; a policy that selects none of the folders, or names a missing one, is a problem."""
    loaded = _loaded_versions(config, versions)
    missing = [v for v in config.version_policy.specific.versions if v not in versions]
    problem = None
    if versions and not loaded:  # model_lifecycle.cc:450-458
        problem = (f"version_policy selects none of the version folders {versions}: Triton reports 'at least one "
                   f"version must be available under the version policy of model '{folder}''",
                   "name existing versions in the policy, or create the version folders it names")
    elif missing:  # model_lifecycle.cc:116-126: Triton logs an error for each and loads the others
        problem = (f"version_policy names version(s) {missing} that have no folder (Triton would load only {loaded})",
                   "create the version folders or fix the policy")
    if problem:
        shown.add(folder, config_rel, _nth(_field_lines(text, "version_policy"), 0), *problem)
    return loaded


def _first_subfolder(model_dir: Path) -> Path | None:
    """The sub-folder Triton inspects to tell a model's backend: the first by name, version or not
    (AutoCompleteBackendFields reads `*version_dirs.begin()` of a std::set, src/model_config_utils.cc:1018-1028)."""
    subfolders = sorted((p for p in model_dir.iterdir() if p.is_dir()), key=lambda p: os.fsencode(p.name))
    return subfolders[0] if subfolders else None


def _triton_backend(config: ModelConfig, model_dir: Path, folder: str) -> str:
    """The backend Triton loads a model with: `backend`, else the one its platform or default_model_filename
    names, else the one a model file in the first sub-folder names, else the part of the model name after its
    first '.' ("m.identity": identity). AutoCompleteBackendFields, src/model_config_utils.cc:1011-1242."""
    if config.backend:
        return config.backend
    if config.platform:
        return _PLATFORM_BACKENDS.get(config.platform, "")
    if config.default_model_filename:
        return _BACKEND_OF_FILE.get(config.default_model_filename, "")
    first = _first_subfolder(model_dir)
    found = next((b for name, b in _BACKEND_OF_FILE.items() if first and (first / name).exists()), "")
    return found or folder.partition(".")[2]


def _check_backend(folder: str, config: ModelConfig, text: str, backend: str, available: Collection[str],
                   config_rel: Path, shown: _Collector) -> None:
    """The backend must be one the bundle ships: Triton looks for backends/<name>/ (case-sensitive) and fails the
    model with 'unable to find backend library for backend' (src/backend_model.cc:387-416)."""
    have = ", ".join(sorted(available))
    problem = None
    if config.backend and config.platform == "ensemble":  # ValidateModelConfig, src/model_config_utils.cc:1384-1391
        problem = (f"an ensemble must have no backend (it has \"{config.backend}\")", "remove the `backend` line")
    elif not backend and config.platform:  # ValidateModelConfig, src/model_config_utils.cc:1374-1383
        problem = (f"platform \"{config.platform}\" is not one Triton knows, and no backend is set",
                   f'set backend: "python" (backends in the bundle: {have})')
    elif not backend:
        problem = ("neither `backend` nor `platform` is set and no model file tells which backend to use",
                   'add backend: "python" (or the backend the model needs)')
    elif backend != "ensemble" and backend not in available:
        what = (f"platform \"{config.platform}\" needs backend \"{backend}\", which is" if not config.backend
                else f"backend \"{backend}\" is")
        close = difflib.get_close_matches(backend.lower(), list(available), n=1, cutoff=0.6)
        case = " (backend names are case-sensitive)" if close and close[0] == backend.lower() else ""
        problem = (f"{what} not in the Triton bundle (it has: {have}); Triton fails the model with 'unable to find "
                   f"backend library for backend '{backend}''",
                   f'use backend: "{close[0]}"{case}' if close else f"serve the model with one of the bundle's "
                   f"backends ({have})")
    if problem:
        line = (_nth(_field_lines(text, "backend", top_level_only=True), 0)
                or _nth(_field_lines(text, "platform", top_level_only=True), 0))
        shown.add(folder, config_rel, line, *problem)


def _check_batching(folder: str, config: ModelConfig, text: str, config_rel: Path, shown: _Collector) -> None:
    """max_batch_size and preferred batch sizes, as ValidateModelConfig checks them (src/model_config_utils.cc)."""
    if config.max_batch_size < 0:
        # :1410-1414
        shown.add(folder, config_rel, _nth(_field_lines(text, "max_batch_size", top_level_only=True), 0),
                  f"max_batch_size {config.max_batch_size} is negative: Triton refuses the model ('max_batch_size' "
                  "must be non-negative value)", "use 0 (no batching) or the largest batch the model takes")
        return
    batchers = (("dynamic_batching", config.dynamic_batching.preferred_batch_size),  # :1422-1438
                ("sequence_batching", config.sequence_batching.oldest.preferred_batch_size))  # :1557-1576
    for batcher, sizes in batchers:
        bad = [size for size in sizes if not 0 < size <= config.max_batch_size]
        if bad:
            start = _nth(_field_lines(text, batcher), 0) or 1
            shown.add(folder, config_rel, _next_line(_field_lines(text, "preferred_batch_size"), start),
                      f"{batcher} preferred_batch_size {bad} outside 1..max_batch_size ({config.max_batch_size}): "
                      "Triton refuses the model ('preferred size must be <= max batch size')",
                      "lower the preferred sizes or raise max_batch_size")


def _dims_problem(tensor, max_batch_size: int, autocompleted: bool) -> str | None:
    """What Triton refuses in a tensor's dims and reshape (ValidateIOShape, src/model_config_utils.cc:296-353),
    checked once the backend completed the config (src/model.cc:100-101)."""
    if not tensor.dims:
        # a Python model's auto_complete_config may fill them in; with no dims the model never loads
        return None if autocompleted else "has no dims: Triton refuses it ('must specify 'dims''), batching or not"
    bad = [d for d in tensor.dims if d < 1 and d != -1]
    if bad:
        return f"has dims {list(tensor.dims)}: Triton refuses {bad} (a dimension is >= 1, or -1 for a variable size)"
    if tensor.HasField("reshape"):
        if not tensor.reshape.shape and max_batch_size == 0:
            return "has an empty reshape in a model without batching: Triton refuses scalar tensors there"
        bad = [d for d in tensor.reshape.shape if d < 1 and d != -1]
        if bad:
            return f"has reshape {list(tensor.reshape.shape)}: Triton refuses {bad} (>= 1, or -1 for a variable size)"
    return None


_DIMS_HINT = ("use dims: [ 4 ], [ -1 ] (variable) or [ 1 ] for a single value; a batching model's batch dimension "
              "is left out of dims")


def _tensor_problems(kind: str, tensor, seen: set[str], max_batch_size: int,
                     autocompleted: bool) -> list[tuple[str, str, bool]]:
    """(message, hint, whether it is about the dims line) for each thing wrong with one input or output."""
    found = []
    if not tensor.name:
        found.append((f"an {kind} has no name", f"give every {kind} a name", False))
    elif tensor.name in seen:
        found.append((f"{kind} \"{tensor.name}\" is declared twice", f"give every {kind} a distinct name", False))
    if tensor.data_type == DataType.TYPE_INVALID and not autocompleted:
        found.append((f"{kind} \"{tensor.name}\" has no data_type",
                      "set data_type: TYPE_FP32 (or another TYPE_* value)", False))
    dims = _dims_problem(tensor, max_batch_size, autocompleted)
    if dims:
        found.append((f"{kind} \"{tensor.name}\" {dims}", _DIMS_HINT, bool(tensor.dims)))
    return found


def _check_tensors(folder: str, config: ModelConfig, text: str, config_rel: Path, autocompleted: bool,
                   shown: _Collector) -> None:
    """Names, data types and shapes of inputs and outputs (ValidateModelIOConfig, src/model_config_utils.cc:1246).
    Lines are looked up only for a tensor with problems: finding them costs more than the checks."""
    for kind, tensors in (("input", config.input), ("output", config.output)):
        seen: set[str] = set()
        for tensor in tensors:
            problems = _tensor_problems(kind, tensor, seen, config.max_batch_size, autocompleted)
            seen.add(tensor.name)
            if not problems:
                continue
            first = _nth(_field_lines(text, kind), 0)
            line = _literal_line(text, tensor.name, first or 1) if tensor.name else first
            for message, hint, on_dims in problems:
                at = _next_line(_field_lines(text, "dims"), line or 1) if on_dims else None
                shown.add(folder, config_rel, at or line, message, hint)


def _defines_auto_complete(tree: ast.Module) -> bool:
    """True when TritonPythonModel has auto_complete_config, with which the Python backend completes the config."""
    return any(isinstance(node, ast.ClassDef) and node.name == "TritonPythonModel" and
               any(isinstance(f, ast.FunctionDef) and f.name == "auto_complete_config" for f in node.body)
               for node in tree.body)


def _check_python_files(folder: str, model_dir: Path, config: ModelConfig, loaded: list[int], bad_links: set[Path],
                        shown: _Collector) -> bool:
    """The model file of every version Triton loads; True when each defines auto_complete_config."""
    filename = config.default_model_filename or "model.py"
    autocompleted = bool(loaded)
    for v in loaded:
        model_file = model_dir / str(v) / filename
        rel = Path(folder) / str(v) / filename
        if rel in bad_links or any(parent in bad_links for parent in rel.parents):
            autocompleted = False
            continue  # reported with the symlinks
        if not model_file.is_file():
            shown.add(folder, rel, None, f"{filename} is missing in version folder {v}/",
                      f"put the Python model (a TritonPythonModel class) in {rel}")
            autocompleted = False
            continue
        try:
            tree = ast.parse(model_file.read_bytes(), str(rel))
            compile(tree, str(rel), "exec", dont_inherit=True)  # what the parser alone lets through
        except SyntaxError as exc:
            shown.add(folder, rel, exc.lineno, f"Python syntax error: {exc.msg}",
                      "fix the model code; the server would report the model UNAVAILABLE")
            autocompleted = False
        except (OSError, ValueError) as exc:
            shown.add(folder, rel, None, f"cannot read the model: {exc}", "check the file")
            autocompleted = False
        else:
            autocompleted = autocompleted and _defines_auto_complete(tree)
    return autocompleted


def _read_config(folder: str, model_dir: Path, config_rel: Path, shown: _Collector) -> tuple[ModelConfig | None, str]:
    """The parsed config.pbtxt and its text; without the file, the config Triton fills in by itself
    (autofill, on by default: src/model_repository_manager/model_repository_manager.cc:1597-1601) when a model
    file tells the backend."""
    config_path = model_dir.parent / config_rel
    if not config_path.is_file():
        if _triton_backend(ModelConfig(), model_dir, folder):
            return ModelConfig(name=folder), ""
        first = _first_subfolder(model_dir)
        looked = (f" and {first.name}/, the first sub-folder by name and the one Triton looks in, has no model.py"
                  if first else "")
        shown.add(folder, config_rel, None, f"config.pbtxt is missing{looked}",
                  f"write {config_rel} with at least `backend: \"python\"` (or `platform`), the inputs and outputs, "
                  f"or put model.py in {folder}/1/ and let Triton complete the config")
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
    return _parse_config(folder, config_rel, text, shown), text


def _check_model(folder: str, model_dir: Path, shown: _Collector, bad_links: set[Path],
                 backends: Collection[str], config_file: str = CONFIG_NAME) -> tuple[ModelInfo | None, str]:
    """Validate one model folder from its config.pbtxt (or `config_file`, a variant in configs/); returns its info
    (None when the config is unusable) and the config text."""
    config_rel = Path(folder) / config_file
    found = _version_folders(folder, model_dir, shown)
    if config_rel in bad_links:
        # reported with the symlinks; never read what lies outside the repository
        if not found.versions:
            _no_version_problem(folder, found, shown, ensemble=False)
        return None, ""
    config, text = _read_config(folder, model_dir, config_rel, shown)
    if not found.versions:
        _no_version_problem(folder, found, shown, ensemble=config is not None and config.platform == "ensemble")
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

    loaded = _check_version_policy(folder, config, text, found.versions, config_rel, shown)
    backend = _triton_backend(config, model_dir, folder)
    _check_backend(folder, config, text, backend, backends, config_rel, shown)
    _check_batching(folder, config, text, config_rel, shown)
    autocompleted = backend == "python" and _check_python_files(folder, model_dir, config, loaded, bad_links, shown)
    _check_tensors(folder, config, text, config_rel, autocompleted, shown)

    if backend == "ensemble":
        kinds: frozenset[str] = frozenset()
    elif config.instance_group:
        kinds = frozenset(ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group)
    else:
        kinds = frozenset({"KIND_AUTO"})

    env_python = _check_execution_env(folder, model_dir, config, config_rel, text, shown) if backend == "python" else ""
    info = ModelInfo(name=name, path=model_dir, config=config, versions=tuple(found.versions),
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
    # Triton collapses '..' in the path and reads the archive from wherever that leads
    # (LocalizePythonBackendExecutionEnvironmentPath, src/model_config_utils.cc:917-968)
    inside = os.path.normpath(value[len("$$TRITON_MODEL_DIRECTORY/"):])
    if inside == ".." or inside.startswith(("../", "/")):
        target = os.path.normpath(shown.shown_root / folder / inside)
        shown.add(folder, config_rel, line, f"EXECUTION_ENV_PATH {value!r} climbs out of the model folder, to "
                  f"{target}: the archive would not travel with the model",
                  'put the archive in the model folder and use "$$TRITON_MODEL_DIRECTORY/<archive>.tar.gz"')
        return ""
    archive = model_dir / inside
    rel = Path(folder) / inside
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
            # model_version -1 is the latest loaded version, any other must be loaded; left out, it reads as 0
            # (src/model_repository_manager/model_repository_manager.cc:1847-1860)
            loaded = _loaded_versions(target.config, list(target.versions))
            if step.model_version != -1 and step.model_version not in loaded:
                unset = " (model_version left out reads as 0)" if step.model_version == 0 else ""
                shown.add(folder, config_rel, line,
                          f"step {i + 1} asks for version {step.model_version} of \"{step.model_name}\"{unset}, "
                          f"which loads versions {loaded}: Triton refuses the ensemble ('required version "
                          f"{step.model_version} is not loaded')",
                          "use model_version: -1 (latest) or a version the model's version_policy loads")
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


def _ensembles_reached(start: str, uses: dict[str, list[str]]) -> dict[str, list[str]]:
    """Every ensemble the steps of `start` lead to, directly or through other ensembles, with the chain to it."""
    chains: dict[str, list[str]] = {}
    todo = [[start]]
    while todo:
        chain = todo.pop()
        for used in uses[chain[-1]]:
            if used not in chains:
                chains[used] = chain + [used]
                todo.append(chains[used])
    return chains


def _check_ensemble_cycles(models: dict[str, ModelInfo], texts: dict[str, str], shown: _Collector) -> None:
    """Ensembles must not use themselves, directly or through other ensembles.

    Triton refuses every ensemble on such a cycle ('circular dependency between ensembles', CircularDependencyCheck,
    src/model_repository_manager/model_repository_manager.cc:2185-2220). An ensemble that only reaches a cycle sends
    that check into endless recursion: tritonserver 2.51 died of a segmentation fault at start (seen)."""
    ensembles = {name for name, info in models.items() if info.backend == "ensemble"}
    uses = {name: [s.model_name for s in models[name].config.ensemble_scheduling.step if s.model_name in ensembles]
            for name in ensembles}
    reached = {name: _ensembles_reached(name, uses) for name in sorted(ensembles)}
    for name, chains in reached.items():
        folder = models[name].path.name
        text, config_rel = texts[folder], Path(folder) / CONFIG_NAME
        start = _nth(_field_lines(text, "ensemble_scheduling"), 0) or 1
        if name in chains:
            cycle = chains[name]
            shown.add(folder, config_rel, _literal_line(text, cycle[1], start),
                      f"circular dependency between ensembles: {' -> '.join(cycle)}",
                      "an ensemble's steps must not lead back to the ensemble itself")
            continue
        cyclic = sorted(other for other in chains if other in reached[other])
        if cyclic:
            shown.add(folder, config_rel, start, f"uses ensemble \"{cyclic[0]}\" (through "
                      f"{' -> '.join(chains[cyclic[0]])}), which is in a circular dependency: tritonserver 2.51 "
                      "crashed (segmentation fault) at start on such a repository",
                      f"break the cycle of \"{cyclic[0]}\"")


def _check_files(root: Path, shown: "_Collector") -> None:
    """Every file must be a regular file this machine can read (the push copies files, nothing else)."""
    import stat
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if d not in IGNORED_NAMES]
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


def _model_folder_sign(root: Path) -> str | None:
    """What shows that `root` is one model's folder rather than a repository of model folders."""
    subfolders = sorted(p for p in root.iterdir() if p.is_dir())
    if any((sub / CONFIG_NAME).is_file() for sub in subfolders):
        return None  # it holds models
    if (root / CONFIG_NAME).is_file():
        return f"it holds {CONFIG_NAME}"
    return next((f"it holds {sub.name}/model.py" for sub in subfolders
                 if _version_of_folder(sub.name) is not None and (sub / "model.py").is_file()), None)


def validate_repository(path: str | Path, backends: Collection[str] = DEFAULT_BACKENDS) -> Repository:
    """Validate the model repository at `path`; raise ModelRepositoryError listing every problem.

    `backends` are those the Triton bundle ships (backends/<name>/); a model needing another one is a problem.
    """
    shown_root = Path(path)
    shown = _Collector(shown_root)
    if not shown_root.is_dir():
        shown.add(None, "", None, "the model repository is not a folder" if shown_root.exists()
                  else "the model repository does not exist",
                  "pass the folder that holds one sub-folder per model (e.g. examples/models)")
        raise ModelRepositoryError(path, shown.problems)
    root = shown_root.resolve()
    sign = _model_folder_sign(root)
    if sign:
        shown.add(None, "", None, f"this is a model's folder ({sign}), not a model repository",
                  f"pass the folder that holds it, {root.parent}, which holds one sub-folder per model")
        raise ModelRepositoryError(path, shown.problems)

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
        info, text = _check_model(folder, model_dir, shown, bad_links, backends)
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
    _check_ensemble_cycles(models, texts, shown)
    from tritonfleet.triton.smokespec import spec_problems  # each model's smoke spec against its config
    for problem in spec_problems(models.values()):
        shown.add(*problem)

    if shown.problems:
        raise ModelRepositoryError(path, shown.problems)
    return Repository(path=root, models=dict(sorted(models.items())), digest=repository_digest(root))


def with_config_variant(repository: Repository, config_name: str,
                        backends: Collection[str] = DEFAULT_BACKENDS) -> Repository:
    """The repository as a server started with `--model-config-name=<config_name>` loads it: a model with
    `configs/<config_name>.pbtxt` is validated from that file as from a config.pbtxt, the others keep their
    config.pbtxt, as Triton falls back to it (src/model_repository_manager/model_repository_manager.cc:187-211,
    GetModelConfigFullPath). Raises ModelRepositoryError listing every problem of the variants."""
    shown = _Collector(repository.path)
    variant = f"configs/{config_name}.pbtxt"
    models = dict(repository.models)
    for name, info in repository.models.items():
        if (info.path / variant).is_file():
            checked, _ = _check_model(info.path.name, info.path, shown, set(), backends, variant)
            if checked is not None:
                models[name] = checked
    if shown.problems:
        raise ModelRepositoryError(repository.path, shown.problems)
    return replace(repository, models=models)
