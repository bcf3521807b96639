"""Smoke specs: what a model must answer, kept in the model's folder beside config.pbtxt (`<model>/smoke.yaml`).

Without a spec the smoke test builds its inputs from the model's metadata and only checks that every declared
output comes back with its datatype. With one, it sends the spec's inputs and compares the answer with the spec's
outputs, so a model that loads but computes the wrong thing fails the deploy, naming the input and the difference.
Triton ignores files in a model folder that it does not know, so the spec travels with the model: it is pushed
with it, counts in the repository digest, and a rollback smoke-tests the previous release with its own specs.

    # <model>/smoke.yaml (or smoke.yml, or smoke.json with the same keys)
    inputs:                              # every required input; optional ones only when given here
      INPUT0: [1, 2, 3, 4]               # the tensor as sent: the nesting is its shape (a batching model's
      INPUT1:                            #   batch dimension included), the datatype is the model's
        data: [0.5, 0.5, 1, 1]
        datatype: FP32                   # optional, checked against config.pbtxt
        shape: [4]                       # optional: data may then be flat
    outputs:                             # outputs compared; the others are checked for presence and datatype
      OUTPUT0: [1.5, 2.5, 4, 5]          # exact
      OUTPUT1: {data: [0.5, 1.5, 2, 3], tolerance: 1.0e-6}   # floats: absolute tolerance

A decoupled model gives `responses` instead of `outputs`: one mapping of outputs per response, in the order the
model streams them (`responses: []` when it answers with the final flag alone). A sequence model's spec gives
no control inputs (START, END, READY, CORRID): the smoke request is a one-request sequence and Triton fills them.

`spec_problems` checks every spec against its config.pbtxt when the repository is validated, before any host is
touched: unknown inputs and outputs, datatypes, shapes, values the datatype cannot hold, each with file and line.
Numbers are checked in plain Python; numpy is imported only by the smoke test, which turns specs into arrays.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from tritonfleet.errors import TritonfleetError
from tritonfleet.yamlfile import line_of, load_yaml

SPEC_NAMES = ("smoke.yaml", "smoke.yml", "smoke.json")
_TOP_KEYS = ("inputs", "outputs", "responses")
_TENSOR_KEYS = ("data", "datatype", "shape", "tolerance")
_MAX_NESTING = 32  # deeper lists are no tensor anyone writes by hand (and would exhaust the recursion)
_MAX_SHOWN = 160  # characters of a tensor shown in a message

INT_RANGES = {"INT8": (-(1 << 7), (1 << 7) - 1), "INT16": (-(1 << 15), (1 << 15) - 1),
              "INT32": (-(1 << 31), (1 << 31) - 1), "INT64": (-(1 << 63), (1 << 63) - 1),
              "UINT8": (0, (1 << 8) - 1), "UINT16": (0, (1 << 16) - 1), "UINT32": (0, (1 << 32) - 1),
              "UINT64": (0, (1 << 64) - 1)}
FLOAT_TYPES = ("FP16", "FP32", "FP64")
DATATYPES = ("BOOL", *INT_RANGES, *FLOAT_TYPES, "BYTES")


class SpecError(TritonfleetError):
    """A smoke spec that cannot be read or used; `problems` lists each (line, message, hint)."""

    def __init__(self, file: str, problems: list[tuple[int | None, str, str]]):
        self.problems = problems
        line, message, hint = problems[0]
        super().__init__(message, file=file, line=line, hint=hint)


@dataclass(frozen=True)
class Tensor:
    """One tensor of a spec, as written: its shape, its values (flat) and how it is compared."""

    name: str
    shape: tuple[int, ...]
    values: tuple
    datatype: str = ""  # as the spec gives it ("" when left to the model's)
    tolerance: float = 0.0  # floats: the absolute difference allowed
    line: int | None = None

    def array(self, datatype: str):
        """The tensor as a numpy array of `datatype` (a Triton datatype such as FP32 or BYTES)."""
        import numpy as np

        if datatype == "BYTES":
            flat = [v.encode() if isinstance(v, str) else bytes(v) for v in self.values]
            return np.array(flat, dtype=np.object_).reshape(self.shape)
        return np.array(self.values, dtype=numpy_dtype(datatype)).reshape(self.shape)

    def shown(self) -> str:
        """The values as a message shows them, bounded."""
        text = json.dumps(_nested(list(self.values), self.shape), default=_text_of, ensure_ascii=False)
        return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN - 3] + "..."


@dataclass(frozen=True)
class SmokeSpec:
    """What one model is sent and must answer, read from its folder."""

    model: str
    file: str  # as messages name it: <model>/smoke.yaml
    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor] | None = None  # a model that answers once
    responses: tuple[dict[str, Tensor], ...] | None = None  # a decoupled model, in order

    def inputs_shown(self) -> str:
        return ", ".join(f"{name}={t.shown()}" for name, t in self.inputs.items()) or "no inputs"


def numpy_dtype(datatype: str):
    """numpy's dtype for a Triton datatype numpy can hold (not BYTES or BF16)."""
    import numpy as np

    if datatype == "BOOL":
        return np.dtype(bool)
    if datatype in INT_RANGES or datatype in FLOAT_TYPES:
        return np.dtype(datatype.lower().replace("fp", "float"))
    raise ValueError(f"datatype {datatype!r} has no numpy counterpart")


def _text_of(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _nested(flat: list, shape: tuple[int, ...]):
    """Flat values back into nested lists of `shape` (for messages)."""
    if not shape:
        return flat[0] if flat else None
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nested(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


# --------------------------------------------------------------------------------------------------------------
# reading


class _Reader:
    """Problems found while reading one spec, each with its line."""

    def __init__(self):
        self.problems: list[tuple[int | None, str, str]] = []

    def add(self, line: int | None, message: str, hint: str = "") -> None:
        self.problems.append((line, message, hint))


def _shape_and_values(data, depth: int = 0) -> tuple[list[int], list]:
    """The shape of nested lists and their values, flat; ValueError when they are ragged or too deep."""
    if depth > _MAX_NESTING:
        raise ValueError(f"the lists nest deeper than {_MAX_NESTING} levels")
    if not isinstance(data, list):
        return [], [data]
    if not data:
        return [0], []
    parts = [_shape_and_values(item, depth + 1) for item in data]
    shapes = {tuple(shape) for shape, _ in parts}
    if len(shapes) > 1:
        raise ValueError(f"its lists are ragged (rows of shapes {sorted(list(s) for s in shapes)})")
    return [len(data), *parts[0][0]], [value for _, values in parts for value in values]


def _value_problem(value, datatype: str) -> str | None:
    """Why `value` cannot be an element of a `datatype` tensor, or None."""
    if datatype == "BOOL":
        ok = isinstance(value, bool)
    elif datatype in INT_RANGES:
        low, high = INT_RANGES[datatype]
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    elif datatype in FLOAT_TYPES:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif datatype == "BYTES":
        ok = isinstance(value, (str, bytes))
    else:
        return f"{datatype} values cannot be written in a smoke spec (numpy cannot build them)"
    return None if ok else f"{value!r} is not a {datatype} value"


def _datatype_of(node, name: str, reader: _Reader, line: int | None) -> str:
    given = node.get("datatype", "") if isinstance(node, dict) else ""
    if given and given not in DATATYPES:
        reader.add(line_of(node, "datatype") or line, f"tensor '{name}': datatype {given!r} is not one a smoke spec "
                   "takes", f"use one of {', '.join(DATATYPES)} (Triton's names: FP32, not TYPE_FP32)")
        return ""
    return str(given)


def _tolerance_of(node, name: str, reader: _Reader, line: int | None, output: bool) -> float:
    if not isinstance(node, dict) or "tolerance" not in node:
        return 0.0
    value = node["tolerance"]
    where = line_of(node, "tolerance") or line
    if not output:
        reader.add(where, f"input '{name}' has a tolerance: only expected outputs are compared",
                   "remove `tolerance` from the input")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
        reader.add(where, f"output '{name}': tolerance {value!r} is not a number of 0 or more",
                   "write the largest absolute difference allowed, e.g. tolerance: 1.0e-6")
    else:
        return float(value)
    return 0.0


def _shape_given(node, name: str, count: int, reader: _Reader, line: int | None) -> tuple[int, ...] | None:
    shape = node.get("shape")
    where = line_of(node, "shape") or line
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        reader.add(where, f"tensor '{name}': shape {shape!r} is not a list of sizes", "e.g. shape: [1, 4]")
        return None
    if math.prod(shape) != count:
        reader.add(where, f"tensor '{name}': shape {shape} holds {math.prod(shape)} value(s), data has {count}",
                   "make the shape and the number of values agree")
        return None
    return tuple(shape)


def _tensor(name, node, reader: _Reader, line: int | None, output: bool) -> Tensor | None:
    """One tensor from its spec node: values (nested lists) or a mapping with data/datatype/shape/tolerance."""
    if not isinstance(name, str) or not name:
        reader.add(line, f"tensor name {name!r} is not text", "write the tensor's name as in config.pbtxt")
        return None
    if isinstance(node, dict):
        unknown = [str(k) for k in node if k not in _TENSOR_KEYS]
        if unknown:
            reader.add(line_of(node, unknown[0]) or line, f"tensor '{name}' has unknown key(s) {', '.join(unknown)}",
                       f"a tensor takes {', '.join(_TENSOR_KEYS)}")
        if "data" not in node:
            reader.add(line, f"tensor '{name}' has no data", "give its values as `data: [...]`")
            return None
        data = node["data"]
    else:
        data = node
    try:
        shape, values = _shape_and_values(data)
    except ValueError as exc:
        reader.add(line, f"tensor '{name}': {exc}", "give every row the same length")
        return None
    datatype = _datatype_of(node, name, reader, line)
    tolerance = _tolerance_of(node, name, reader, line, output)
    if isinstance(node, dict) and "shape" in node:
        shape = _shape_given(node, name, len(values), reader, line) or shape
    return Tensor(name, tuple(shape), tuple(values), datatype, tolerance, line)


def _tensors(node, what: str, reader: _Reader, output: bool) -> dict[str, Tensor]:
    if node is None:
        return {}
    if not isinstance(node, dict):
        reader.add(line_of(node), f"`{what}` is not a mapping of tensor names to values",
                   f"write {what}: {{NAME: [values], ...}}")
        return {}
    tensors = {}
    for name, value in node.items():
        tensor = _tensor(name, value, reader, line_of(node, name), output)
        if tensor is not None:
            tensors[name] = tensor
    return tensors


def parse_spec(data, model: str, file: str) -> SmokeSpec:
    """A spec from what its file holds (a LineDict from load_yaml, or plain data); raises SpecError."""
    reader = _Reader()
    if not isinstance(data, dict):
        raise SpecError(file, [(line_of(data), "a smoke spec is a mapping with `inputs` and `outputs` (or "
                                "`responses`)", "see tritonfleet/triton/smokespec.py for the format")])
    unknown = [str(k) for k in data if k not in _TOP_KEYS]
    if unknown:
        reader.add(line_of(data, unknown[0]), f"unknown key(s) {', '.join(unknown)}",
                   f"a smoke spec takes {', '.join(_TOP_KEYS)}")
    if "outputs" in data and "responses" in data:
        reader.add(line_of(data, "responses"), "both `outputs` and `responses` are given",
                   "`outputs` for a model that answers once, `responses` for a decoupled model")
    inputs = _tensors(data.get("inputs"), "inputs", reader, output=False)
    outputs = _tensors(data.get("outputs"), "outputs", reader, output=True) if "outputs" in data else None
    responses = None
    if "responses" in data:
        listed = data["responses"]
        if not isinstance(listed, list):
            reader.add(line_of(data, "responses"), "`responses` is not a list",
                       "one mapping of outputs per response, in order; [] for none")
            listed = []
        responses = tuple(_tensors(r, f"responses[{i}]", reader, output=True) for i, r in enumerate(listed))
    if reader.problems:
        raise SpecError(file, reader.problems)
    return SmokeSpec(model, file, inputs, outputs, responses)


def spec_file(model_dir: Path) -> Path | None:
    """The model's spec file; SpecError when it has more than one."""
    found = [model_dir / name for name in SPEC_NAMES if (model_dir / name).is_file()]
    if len(found) > 1:
        raise SpecError(f"{model_dir.name}/{found[1].name}", [(None, f"{model_dir.name}/ has {len(found)} smoke "
                        f"specs ({', '.join(p.name for p in found)})", "keep one of them")])
    return found[0] if found else None


def _read(path: Path):
    """What the spec file at `path` holds (YAML, or JSON, which YAML reads too), with its lines."""
    try:
        return load_yaml(path)
    except TritonfleetError as exc:
        raise SpecError(_shown(path), [(exc.line, exc.message, exc.hint or "")]) from None


def _shown(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def load_spec(model: str, path: Path) -> SmokeSpec:
    """The spec at `path`, named in messages as <model folder>/<file>; raises SpecError."""
    return parse_spec(_read(path), model, _shown(path))


def repository_specs(repository) -> dict[str, SmokeSpec]:
    """The spec of every model of a validated repository (`models.Repository`) that has one."""
    specs = {}
    for name, info in repository.models.items():
        path = spec_file(info.path)
        if path is not None:
            specs[name] = load_spec(name, path)
    return specs


def remote_specs_command(models_path: str) -> str:
    """A shell command printing `<folder>/<spec file><TAB><base64 of its text>` for each spec in a repository."""
    globs = " ".join(f"*/{name}" for name in SPEC_NAMES)
    return (f"cd {shlex.quote(models_path)} 2>/dev/null && for f in {globs}; do "
            "[ -f \"$f\" ] && printf '%s\\t' \"$f\" && base64 -w0 \"$f\" && echo; done; true")


def remote_specs(output: str) -> dict[str, SmokeSpec]:
    """The specs `remote_specs_command` printed, keyed by model folder; a spec that does not read is a SpecError.

    A folder's name is its model's name: validation refuses a config.pbtxt that names another one.
    """
    specs = {}
    for line in output.splitlines():
        file, _, encoded = line.partition("\t")
        folder = file.partition("/")[0]
        try:
            data = yaml.safe_load(base64.b64decode(encoded, validate=True))
        except (binascii.Error, yaml.YAMLError) as exc:
            raise SpecError(file, [(None, f"cannot read the spec on the host: {exc}", "deploy again")]) from None
        specs[folder] = parse_spec(data, folder, file)
    return specs


# --------------------------------------------------------------------------------------------------------------
# checks against config.pbtxt (repository validation)


def _datatype_name(tensor) -> str:
    """A config input/output's datatype as the smoke test and the KServe API name it (TYPE_STRING is BYTES)."""
    name = tensor.DESCRIPTOR.fields_by_name["data_type"].enum_type.values_by_number[tensor.data_type].name
    return "BYTES" if name == "TYPE_STRING" else name.removeprefix("TYPE_")


def _shape_problem(shape: tuple[int, ...], dims: list[int], batching: int, sequence: bool) -> str | None:
    """Why a tensor of `shape` does not fit a config's dims (a batching model's batch dimension first)."""
    expected = ([-1] if batching else []) + list(dims)
    shown = "[" + ", ".join("batch" if batching and i == 0 else str(d) for i, d in enumerate(expected)) + "]"
    if len(shape) != len(expected) or any(d not in (-1, s) for s, d in zip(shape, expected)):
        return f"has shape {list(shape)}; config.pbtxt declares {shown}"
    if batching and not 1 <= shape[0] <= batching:
        return f"has batch size {shape[0]}; the model takes 1 to {batching} (max_batch_size)"
    if batching and sequence and shape[0] != 1:
        return f"has batch size {shape[0]}; a sequence model takes one request per sequence step (batch size 1)"
    return None


def _tensor_problems(tensor: Tensor, declared, kind: str, batching: int, sequence: bool) -> list[tuple[str, str]]:
    """(message, hint) for each way a spec tensor does not fit its config.pbtxt declaration."""
    datatype = _datatype_name(declared)
    found = []
    if tensor.datatype and tensor.datatype != datatype:
        found.append((f"{kind} '{tensor.name}' is given as {tensor.datatype}; config.pbtxt declares {datatype}",
                      f"write datatype: {datatype}, or leave it out"))
    bad = next((problem for v in tensor.values if (problem := _value_problem(v, datatype))), None)
    if bad:
        found.append((f"{kind} '{tensor.name}': {bad}", f"give {datatype} values"))
    dims = _shape_problem(tensor.shape, list(declared.dims), batching, sequence) if declared.dims else None
    if dims:
        found.append((f"{kind} '{tensor.name}' {dims}", "write the tensor as sent or returned, batch dimension "
                      "included for a model with max_batch_size > 0"))
    return found


def _check_tensors(tensors: dict[str, Tensor], declared: dict, kind: str, config, reader: _Reader) -> None:
    """Spec tensors against the config's inputs or outputs (skipped when the config declares none: the model's
    auto_complete_config fills them in on the server, and the smoke test checks there)."""
    if not declared:
        return
    controls = {c.name for c in config.sequence_batching.control_input}
    for name, tensor in tensors.items():
        if name not in declared:
            why = (" (a sequence control: Triton sets it from the request's sequence flags)" if name in controls
                   else "")
            reader.add(tensor.line, f"{kind} '{name}' is not an {kind} of the model{why}",
                       f"the model's {kind}s: {', '.join(sorted(declared))}")
            continue
        for message, hint in _tensor_problems(tensor, declared[name], kind, config.max_batch_size,
                                              config.HasField("sequence_batching")):
            reader.add(tensor.line, message, hint)


def _check_against_config(spec: SmokeSpec, data, config, reader: _Reader) -> None:
    inputs = {t.name: t for t in config.input}
    outputs = {t.name: t for t in config.output}
    _check_tensors(spec.inputs, inputs, "input", config, reader)
    missing = sorted(n for n, t in inputs.items() if not t.optional and n not in spec.inputs)
    if missing:
        reader.add(line_of(data, "inputs") or line_of(data), f"required input(s) {', '.join(missing)} not given",
                   "give every input config.pbtxt declares without `optional: true`")
    decoupled = config.model_transaction_policy.decoupled
    if decoupled and spec.outputs is not None:
        reader.add(line_of(data, "outputs"), "the model is decoupled (model_transaction_policy), so it streams "
                   "responses: give them as `responses`, in order", "rename `outputs` to `responses: [ {...} ]`")
    if not decoupled and spec.responses is not None and (inputs or outputs):
        reader.add(line_of(data, "responses"), "`responses` is for a decoupled model; this one answers once",
                   "give the expected answer as `outputs`")
    for expected in ([spec.outputs] if spec.outputs else []) + list(spec.responses or ()):
        _check_tensors(expected, outputs, "output", config, reader)


def spec_problems(models: Iterable) -> list[tuple[str, Path, int | None, str, str]]:
    """(model folder, spec file relative to the repository, line, message, hint) for every spec that cannot be
    used with its model (`models.ModelInfo`s of a repository under validation)."""
    found = []
    for info in models:
        folder = info.path.name
        try:
            path = spec_file(info.path)
            if path is None:
                continue
            data = _read(path)
            spec = parse_spec(data, info.name, _shown(path))
        except SpecError as exc:
            found += [(folder, Path(exc.file), line, message, hint) for line, message, hint in exc.problems]
            continue
        reader = _Reader()
        _check_against_config(spec, data, info.config, reader)
        found += [(folder, Path(spec.file), line, message, hint) for line, message, hint in reader.problems]
    return found
