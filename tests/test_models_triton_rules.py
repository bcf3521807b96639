"""Repository validation against Triton's own rules (triton-inference-server/core r24.10, tritonserver 2.51).

Each row builds a small repository and says what validation must refuse (the problem's text, file and line) or
accept. tests/test_models_server.py shows a real tritonserver doing the same with the same rows.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from test_models import MODEL_PY, PY_CONFIG, ensemble, only, problems_of, python_model
from tritonfleet.triton.models import validate_repository

AUTO_COMPLETE_PY = MODEL_PY + """
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "IN", "data_type": "TYPE_FP32", "dims": [4]})
        config.add_output({"name": "OUT", "data_type": "TYPE_FP32", "dims": [4]})
        return config
"""


def config(name: str = "m", *, dims: str = "[ 4 ]", max_batch_size: int = 0, backend: str = 'backend: "python"',
           extra: str = "") -> str:
    text = PY_CONFIG.format(name=name).replace("dims: [ 4 ]", f"dims: {dims}")
    text = text.replace('backend: "python"', backend).replace("max_batch_size: 0", f"max_batch_size: {max_batch_size}")
    return text + extra


def step(model: str, version: str = "model_version: -1 ") -> str:
    maps = 'input_map { key: "X" value: "X" } output_map { key: "Y" value: "Y" }'
    return f'    {{ model_name: "{model}" {version}{maps} }}'


def configless(repo: Path, folder: str, **kwargs) -> Path:
    d = python_model(repo, folder, **kwargs)
    (d / "config.pbtxt").unlink()
    return d


def cyclic(repo: Path, uses: dict[str, str]) -> None:
    for name, used in uses.items():
        ensemble(repo, name, step(used))


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


# (id, build(repo), needle in the problem, file relative to the repository, line: needle in that file or None)
REFUSED = [
    ("max_batch_size negative", lambda r: python_model(r, "m", config=config(max_batch_size=-5)),
     "max_batch_size -5 is negative", "m/config.pbtxt", "max_batch_size"),
    ("dims zero", lambda r: python_model(r, "m", config=config(dims="[ 0 ]")),
     'input "IN" has dims [0]: Triton refuses [0]', "m/config.pbtxt", "dims"),
    ("dims minus two", lambda r: python_model(r, "m", config=config(dims="[ 4, -2 ]")),
     'input "IN" has dims [4, -2]: Triton refuses [-2]', "m/config.pbtxt", "dims"),
    ("dims empty", lambda r: python_model(r, "m", config=config(dims="[ ]")),
     'input "IN" has no dims', "m/config.pbtxt", '"IN"'),
    ("dims empty in a batching model", lambda r: python_model(r, "m", config=config(dims="[ ]", max_batch_size=4)),
     'output "OUT" has no dims', "m/config.pbtxt", '"OUT"'),
    ("empty reshape without batching", lambda r: python_model(r, "m", config=config(
        dims="[ 1 ] reshape: { shape: [ ] }")),
     'input "IN" has an empty reshape in a model without batching', "m/config.pbtxt", "reshape"),
    ("preferred batch size above max", lambda r: python_model(r, "m", config=config(
        max_batch_size=4, extra="dynamic_batching {\n  preferred_batch_size: [ 2, 8 ]\n}\n")),
     "dynamic_batching preferred_batch_size [8] outside 1..max_batch_size (4)", "m/config.pbtxt",
     "preferred_batch_size"),
    ("preferred batch size without batching", lambda r: python_model(r, "m", config=config(
        extra="sequence_batching { oldest { preferred_batch_size: [ 1 ] } }\n")),
     "sequence_batching preferred_batch_size [1] outside 1..max_batch_size (0)", "m/config.pbtxt",
     "preferred_batch_size"),
    ("specific policy selects no folder", lambda r: python_model(r, "m", config=config(
        extra="version_policy: { specific: { versions: [ 3 ] } }\n")),
     "version_policy selects none of the version folders [1]", "m/config.pbtxt", "version_policy"),
    ("latest policy of zero versions", lambda r: python_model(r, "m", config=config(
        extra="version_policy: { latest: { } }\n")),
     "at least one version must be available", "m/config.pbtxt", "version_policy"),
    ("ensemble uses itself", lambda r: cyclic(r, {"ens": "ens"}),
     "circular dependency between ensembles: ens -> ens", "ens/config.pbtxt", 'model_name: "ens"'),
    ("two ensembles use each other", lambda r: cyclic(r, {"a": "b", "b": "a"}),
     "circular dependency between ensembles: a -> b -> a", "a/config.pbtxt", 'model_name: "b"'),
    ("ensemble reaches a cycle (tritonserver segfaults)", lambda r: cyclic(r, {"a": "b", "b": "a", "c": "a"}),
     'uses ensemble "a" (through c -> a), which is in a circular dependency', "c/config.pbtxt",
     "ensemble_scheduling"),
    ("ensemble step without model_version", lambda r: (python_model(r, "a", config=config("a").replace(
        '"IN"', '"X"').replace('"OUT"', '"Y"')), ensemble(r, "ens", step("a", version=""))),
     'asks for version 0 of "a" (model_version left out reads as 0), which loads versions [1]', "ens/config.pbtxt",
     'model_name: "a"'),
    ("backend misspelt", lambda r: python_model(r, "m", config=config(backend='backend: "pyhton"')),
     "backend \"pyhton\" is not in the Triton bundle (it has: python)", "m/config.pbtxt", "backend"),
    ("backend capitalised", lambda r: python_model(r, "m", config=config(backend='backend: "Python"')),
     "backend \"Python\" is not in the Triton bundle", "m/config.pbtxt", "backend"),
    ("platform name as backend", lambda r: python_model(r, "m", config=config(backend='backend: "onnxruntime_onnx"')),
     "'unable to find backend library for backend 'onnxruntime_onnx''", "m/config.pbtxt", "backend"),
    ("platform of a backend the bundle lacks", lambda r: python_model(r, "m", config=config(
        backend='platform: "onnxruntime_onnx"')),
     'platform "onnxruntime_onnx" needs backend "onnxruntime", which', "m/config.pbtxt", "platform"),
    ("version folder beyond 64 bits (tritonserver aborts)", lambda r: python_model(
        r, "m", versions=(1, 99999999999999999999)),
     "version folder too large for Triton's 64-bit versions", "m/99999999999999999999", None),
    ("version folder with trailing letters (tritonserver hangs)", lambda r: python_model(r, "m", versions=("1abc",)),
     "Triton reads folder '1abc' as version 1", "m/1abc", None),
    ("execution environment out of the model folder", lambda r: python_model(r, "m", config=config(
        extra='parameters: { key: "EXECUTION_ENV_PATH" value: { string_value: '
              '"$$TRITON_MODEL_DIRECTORY/../../envs/x.tar.gz" } }\n')),
     "climbs out of the model folder", "m/config.pbtxt", "EXECUTION_ENV_PATH"),
    ("version folder with a leading zero", lambda r: python_model(r, "m", versions=("01",)),
     "it ignores 01/ (leading zero)", "m", None),
    ("version folder in Arabic-Indic digits", lambda r: python_model(r, "m", versions=("\u0661",)),
     "it ignores \u0661/ (it reads ASCII digits only)", "m", None),
    ("no config and no model.py where Triton looks", lambda r: (
        configless(r, "m"), (r / "m" / ".ipynb_checkpoints").mkdir()),
     "config.pbtxt is missing and .ipynb_checkpoints/, the first sub-folder by name", "m/config.pbtxt", None),
]


@pytest.mark.parametrize("build, needle, file, line", [row[1:] for row in REFUSED], ids=[row[0] for row in REFUSED])
def test_refused_as_triton_refuses(tmp_path, build, needle, file, line):
    build(tmp_path)
    problem = only(problems_of(tmp_path), needle)
    assert problem.file == str(tmp_path / file)
    assert problem.line == (line_of(tmp_path / file, line) if line else None)
    assert problem.hint and problem.model == file.split("/")[0]


def test_misread_version_folders_do_not_claim_model_py_is_missing(tmp_path):
    python_model(tmp_path, "lead", versions=("01",))
    python_model(tmp_path, "arabic", versions=("\u0661",))
    problems = problems_of(tmp_path)
    assert len(problems) == 2 and not any("model.py is missing" in p.message for p in problems)


def test_backend_hint_names_the_right_spelling(tmp_path):
    python_model(tmp_path, "m", config=config(backend='backend: "Python"'))
    hint = only(problems_of(tmp_path), "not in the Triton bundle").hint
    assert hint == 'use backend: "python" (backend names are case-sensitive)'


def test_available_backends_are_a_parameter(tmp_path):
    d = python_model(tmp_path, "m", config=config(backend='platform: "onnxruntime_onnx"'), model_py=None)
    (d / "1" / "model.onnx").write_bytes(b"onnx")
    with pytest.raises(Exception, match="has: python"):
        validate_repository(tmp_path)
    assert validate_repository(tmp_path, backends=("python", "onnxruntime")).models["m"].backend == "onnxruntime"


@pytest.mark.parametrize("as_given", ["m", "m/1/.."])
def test_a_model_folder_instead_of_the_repository(tmp_path, as_given):
    python_model(tmp_path, "m")
    [problem] = problems_of(tmp_path / as_given)
    assert "this is a model's folder (it holds config.pbtxt), not a model repository" in problem.message
    assert str(tmp_path) in problem.hint


def test_a_model_folder_without_config_instead_of_the_repository(tmp_path):
    configless(tmp_path, "m")
    [problem] = problems_of(tmp_path / "m")
    assert "it holds 1/model.py" in problem.message


def test_a_repository_with_a_stray_config_is_still_a_repository(tmp_path):
    python_model(tmp_path, "m")
    (tmp_path / "config.pbtxt").write_text("# notes\n")
    assert set(validate_repository(tmp_path).models) == {"m"}


# ---- accepted, as Triton accepts them


def test_superscript_folder_beside_a_version_is_ignored(tmp_path):
    python_model(tmp_path, "m", versions=(1, "\u00b2"))
    assert validate_repository(tmp_path).models["m"].versions == (1,)


def test_version_zero(tmp_path):
    python_model(tmp_path, "m", versions=(0,))
    assert validate_repository(tmp_path).models["m"].versions == (0,)


def test_python_model_without_config(tmp_path):
    configless(tmp_path, "m", versions=(1, 2))
    info = validate_repository(tmp_path).models["m"]
    assert (info.backend, info.versions, info.instance_kinds) == ("python", (1, 2), frozenset({"KIND_AUTO"}))


def test_python_model_without_config_still_has_its_model_py_checked(tmp_path):
    configless(tmp_path, "m", model_py="def broken(:\n")
    assert only(problems_of(tmp_path), "Python syntax error").file == str(tmp_path / "m" / "1" / "model.py")


def test_auto_complete_config_may_fill_dims_and_types(tmp_path):
    python_model(tmp_path, "m", config=config(dims="[ ]").replace("    data_type: TYPE_FP32\n", ""),
                 model_py=AUTO_COMPLETE_PY)
    assert validate_repository(tmp_path).models["m"].backend == "python"


def test_only_loaded_versions_need_a_model_file(tmp_path):
    python_model(tmp_path, "m", versions=(1, 2), model_py=None)
    (tmp_path / "m" / "2" / "model.py").write_text(MODEL_PY)  # latest 1 (the default policy) loads 2 only
    assert validate_repository(tmp_path).models["m"].versions == (1, 2)


def test_execution_env_path_may_walk_inside_the_model_folder(tmp_path):
    python_model(tmp_path, "m", config=config(extra='parameters: { key: "EXECUTION_ENV_PATH" value: { string_value: '
                                                   '"$$TRITON_MODEL_DIRECTORY/1/../env.tar.gz" } }\n'))
    assert only(problems_of(tmp_path), "archive is missing").file == str(tmp_path / "m" / "env.tar.gz")


def test_reserved_folders_are_not_versions(tmp_path):
    python_model(tmp_path, "m", versions=(1,))
    for name in ("warmup", "configs", "initial_state"):
        os.mkdir(tmp_path / "m" / name)
    assert validate_repository(tmp_path).models["m"].versions == (1,)
