"""Model repository validation, on repositories built in temporary folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tritonfleet.errors import TritonfleetError
from tritonfleet.triton.models import RELOCATABLE_VIRTUAL_ENV, ModelRepositoryError, Problem, validate_repository
from tritonfleet.paths import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples" / "models"

PY_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 0
input [
  {{
    name: "IN"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }}
]
output [
  {{
    name: "OUT"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }}
]
instance_group [ {{ kind: KIND_CPU }} ]
"""

MODEL_PY = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())])
            for r in requests]
"""


def python_model(repo: Path, folder: str, *, name: str | None = None, config: str | None = None,
                 versions=(1,), model_py: str | None = MODEL_PY) -> Path:
    d = repo / folder
    d.mkdir(parents=True)
    (d / "config.pbtxt").write_text(config if config is not None else PY_CONFIG.format(name=name or folder))
    for v in versions:
        (d / str(v)).mkdir()
        if model_py is not None:
            (d / str(v) / "model.py").write_text(model_py)
    return d


def ensemble(repo: Path, folder: str, steps: str, inputs=("X",), outputs=("Y",)) -> Path:
    d = repo / folder
    (d / "1").mkdir(parents=True)
    ins = ",\n".join(f'  {{ name: "{n}" data_type: TYPE_FP32 dims: [ 4 ] }}' for n in inputs)
    outs = ",\n".join(f'  {{ name: "{n}" data_type: TYPE_FP32 dims: [ 4 ] }}' for n in outputs)
    (d / "config.pbtxt").write_text(
        f'name: "{folder}"\nplatform: "ensemble"\nmax_batch_size: 0\n'
        f"input [\n{ins}\n]\noutput [\n{outs}\n]\n"
        f"ensemble_scheduling {{\n  step [\n{steps}\n  ]\n}}\n")
    return d


def problems_of(path: Path) -> list[Problem]:
    with pytest.raises(ModelRepositoryError) as info:
        validate_repository(path)
    assert isinstance(info.value, TritonfleetError)
    return info.value.problems


def only(problems: list[Problem], needle: str) -> Problem:
    hits = [p for p in problems if needle in p.message]
    assert len(hits) == 1, f"expected one problem with {needle!r}, got: {[str(p) for p in problems]}"
    return hits[0]


# --------------------------------------------------------------------------------------------


def test_examples_validate():
    repo = validate_repository(EXAMPLES)
    assert {"add_sub", "str_upper", "add_sub_chain"} <= set(repo.models)
    add_sub = repo.models["add_sub"]
    assert add_sub.backend == "python" and add_sub.versions == (1,)
    assert add_sub.instance_kinds == frozenset({"KIND_CPU"}) and not add_sub.uses_gpu()
    assert add_sub.config.max_batch_size == 0
    str_upper = repo.models["str_upper"]
    assert str_upper.config.max_batch_size == 8 and str_upper.config.HasField("dynamic_batching")
    chain = repo.models["add_sub_chain"]
    assert chain.backend == "ensemble" and chain.instance_kinds == frozenset()
    for info in repo.models.values():
        assert info.backend == "ensemble" or info.instance_kinds == frozenset({"KIND_CPU"})
    assert len(repo.digest) == 64


def test_digest_stable_and_content_sensitive(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(EXAMPLES, a)
    shutil.copytree(EXAMPLES, b)
    # bytecode caches left by a local run do not change the digest
    (b / "add_sub" / "1" / "__pycache__").mkdir(exist_ok=True)
    (b / "add_sub" / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"junk")
    da, db = validate_repository(a).digest, validate_repository(b).digest
    assert da == db == validate_repository(EXAMPLES).digest
    with open(b / "add_sub" / "1" / "model.py", "a") as f:
        f.write("\n# changed\n")
    assert validate_repository(b).digest != da
    os.rename(b / "add_sub" / "1" / "model.py", b / "add_sub" / "1" / "model2.py")
    (b / "add_sub" / "1" / "model.py").write_text((a / "add_sub" / "1" / "model.py").read_text())
    assert validate_repository(b).digest != da  # an extra file counts


def test_malformed_config_reports_file_and_exact_line(tmp_path):
    config = PY_CONFIG.format(name="m").replace("data_type: TYPE_FP32", "data_type: TYPE_FLOAT", 1)
    line = config.splitlines().index("    data_type: TYPE_FLOAT") + 1
    assert line == 7
    python_model(tmp_path, "m", config=config)
    p = only(problems_of(tmp_path), "does not parse")
    assert p.model == "m"
    assert p.file == str(tmp_path / "m" / "config.pbtxt")
    assert p.line == 7
    assert "TYPE_FLOAT" in p.message
    assert str(p).startswith(f"{tmp_path / 'm' / 'config.pbtxt'}:7: model 'm': ")
    assert "(fix: " in str(p)


def test_syntax_error_unclosed_brace_line(tmp_path):
    python_model(tmp_path, "m", config='name: "m"\nbackend: "python"\ninput [\n  { name: "IN" \n')
    p = only(problems_of(tmp_path), "does not parse")
    assert p.line == 4  # protobuf reports the line of the last token it read


def test_unknown_field_reported(tmp_path):
    python_model(tmp_path, "m", config='name: "m"\nbackend: "python"\nmax_batch: 4\n')
    p = only(problems_of(tmp_path), "does not parse")
    assert p.line == 3 and "max_batch" in p.message


def test_name_mismatch(tmp_path):
    python_model(tmp_path, "folder_name", name="other_name")
    p = only(problems_of(tmp_path), "does not match its folder")
    assert p.model == "folder_name" and p.line == 1
    assert p.file.endswith(os.path.join("folder_name", "config.pbtxt"))


def test_name_may_be_omitted(tmp_path):
    python_model(tmp_path, "m", config=PY_CONFIG.format(name="m").replace('name: "m"\n', "", 1))
    assert set(validate_repository(tmp_path).models) == {"m"}


def test_no_version_folder(tmp_path):
    python_model(tmp_path, "m", versions=())
    (tmp_path / "m" / "latest").mkdir()  # not numeric: Triton ignores it
    p = only(problems_of(tmp_path), "no numeric version folder")
    assert p.model == "m" and "m/1/" in p.hint


def test_missing_model_py(tmp_path):
    python_model(tmp_path, "m", versions=(1, 2), model_py=None)
    (tmp_path / "m" / "1" / "model.py").write_text(MODEL_PY)
    p = only(problems_of(tmp_path), "model.py is missing")
    assert p.file == str(tmp_path / "m" / "2" / "model.py")


def test_default_model_filename(tmp_path):
    config = PY_CONFIG.format(name="m") + 'default_model_filename: "entry.py"\n'
    python_model(tmp_path, "m", config=config, model_py=None)
    p = only(problems_of(tmp_path), "entry.py is missing")
    assert p.model == "m"
    (tmp_path / "m" / "1" / "entry.py").write_text(MODEL_PY)
    assert validate_repository(tmp_path).models["m"].versions == (1,)


def test_model_py_syntax_error(tmp_path):
    python_model(tmp_path, "m", model_py="import os\n\ndef broken(:\n    pass\n")
    p = only(problems_of(tmp_path), "Python syntax error")
    assert p.line == 3 and p.file.endswith(os.path.join("m", "1", "model.py"))


def test_ensemble_names_missing_model(tmp_path):
    python_model(tmp_path, "a")
    steps = ('    { model_name: "a" model_version: -1\n'
             '      input_map { key: "IN" value: "X" } output_map { key: "OUT" value: "T" } },\n'
             '    { model_name: "ghost" model_version: -1\n'
             '      input_map { key: "IN" value: "T" } output_map { key: "OUT" value: "Y" } }')
    ensemble(tmp_path, "ens", steps)
    p = only(problems_of(tmp_path), "not in the repository")
    assert p.model == "ens" and '"ghost"' in p.message
    text = (tmp_path / "ens" / "config.pbtxt").read_text().splitlines()
    assert p.line == next(i for i, l in enumerate(text, 1) if '"ghost"' in l)


def test_ensemble_consumes_unproduced_tensor(tmp_path):
    python_model(tmp_path, "a")
    steps = ('    { model_name: "a" model_version: -1\n'
             '      input_map { key: "IN" value: "X" }\n'
             '      output_map { key: "OUT" value: "T" } },\n'
             '    { model_name: "a" model_version: -1\n'
             '      input_map { key: "IN" value: "NOWHERE" }\n'
             '      output_map { key: "OUT" value: "Y" } }')
    ensemble(tmp_path, "ens", steps)
    p = only(problems_of(tmp_path), "consumes tensor")
    assert '"NOWHERE"' in p.message
    text = (tmp_path / "ens" / "config.pbtxt").read_text().splitlines()
    assert p.line == next(i for i, l in enumerate(text, 1) if '"NOWHERE"' in l)


def test_ensemble_unknown_step_input_and_unproduced_output(tmp_path):
    python_model(tmp_path, "a")
    steps = ('    { model_name: "a" model_version: -1 input_map { key: "WRONG" value: "X" } output_map { key: "OUT" value: "T" } }')
    ensemble(tmp_path, "ens", steps, outputs=("Y",))
    problems = problems_of(tmp_path)
    only(problems, "not an input of")
    only(problems, 'ensemble output "Y" is not produced')


def test_ensemble_step_with_broken_model_not_reported_missing(tmp_path):
    python_model(tmp_path, "a", config='name: "a"\nbackend: "python"\nbogus: 1\n')
    steps = '    { model_name: "a" model_version: -1 input_map { key: "IN" value: "X" } output_map { key: "OUT" value: "Y" } }'
    ensemble(tmp_path, "ens", steps)
    problems = problems_of(tmp_path)
    assert [p.model for p in problems] == ["a"] and "does not parse" in problems[0].message


def test_valid_ensemble(tmp_path):
    python_model(tmp_path, "a")
    steps = ('    { model_name: "a" model_version: -1 input_map { key: "IN" value: "X" } output_map { key: "OUT" value: "T" } },\n'
             '    { model_name: "a" model_version: -1 input_map { key: "IN" value: "T" } output_map { key: "OUT" value: "Y" } }')
    ensemble(tmp_path, "ens", steps)
    repo = validate_repository(tmp_path)
    assert repo.models["ens"].backend == "ensemble"


def test_symlink_outside_refused(tmp_path):
    repo = tmp_path / "repo"
    python_model(repo, "m", model_py=None)
    secret = tmp_path / "outside.py"
    secret.write_text(MODEL_PY)
    os.symlink(secret, repo / "m" / "1" / "model.py")
    outside_model = tmp_path / "elsewhere"
    python_model(tmp_path, "elsewhere")
    os.symlink(outside_model, repo / "linked_model")
    (repo / "c" / "1").mkdir(parents=True)
    (tmp_path / "not_a_config").write_text("secret: 1\n")
    os.symlink(tmp_path / "not_a_config", repo / "c" / "config.pbtxt")
    problems = problems_of(repo)
    outside = [p for p in problems if "outside the repository" in p.message]
    assert {p.file for p in outside} == {str(repo / "m" / "1" / "model.py"), str(repo / "linked_model"),
                                         str(repo / "c" / "config.pbtxt")}
    assert len(problems) == 3  # what the links point at is never read, so nothing else is reported


def test_symlink_inside_allowed(tmp_path):
    python_model(tmp_path, "m")
    (tmp_path / "m" / "2").mkdir()
    os.symlink("../1/model.py", tmp_path / "m" / "2" / "model.py")
    assert validate_repository(tmp_path).models["m"].versions == (1, 2)


def test_duplicate_names(tmp_path):
    python_model(tmp_path, "a")
    python_model(tmp_path, "b", name="a")
    problems = problems_of(tmp_path)
    dup = only(problems, "already used by folder a/")
    assert dup.model == "b" and dup.line == 1
    only(problems, "does not match its folder")


def test_bad_folder_names(tmp_path):
    python_model(tmp_path, "good")
    python_model(tmp_path, ".hidden")
    python_model(tmp_path, "bad\nname")
    python_model(tmp_path, "tab\tname")
    problems = problems_of(tmp_path)
    bad = {p.model for p in problems if "invalid model folder name" in p.message}
    assert bad == {".hidden", "bad\nname", "tab\tname"}


def test_shell_metacharacters_are_refused(tmp_path):
    # Triton accepts them, but its Python backend runs the stub through `bash -c` with the model path
    # unquoted: `$(...)` in a folder name ran as the service user in the lab (tests/test_security.py)
    python_model(tmp_path, "good-1.2_x")
    python_model(tmp_path, "a$b;c")
    python_model(tmp_path, "with space")
    problems = problems_of(tmp_path)
    bad = {p.model for p in problems if "invalid model folder name" in p.message and "bash -c" in p.message}
    assert bad == {"a$b;c", "with space"}


def test_missing_config_and_datatype(tmp_path):
    (tmp_path / "noconfig" / "1").mkdir(parents=True)
    python_model(tmp_path, "notype", config='name: "notype"\nbackend: "python"\n'
                 'input [ { name: "IN" dims: [ 1 ] } ]\n')
    problems = problems_of(tmp_path)
    assert only(problems, "config.pbtxt is missing").model == "noconfig"
    p = only(problems, "has no data_type")
    assert p.model == "notype" and p.line == 3


def test_instance_kinds(tmp_path):
    python_model(tmp_path, "auto", config=PY_CONFIG.format(name="auto").split("instance_group")[0])
    python_model(tmp_path, "gpu", config=PY_CONFIG.format(name="gpu").replace("KIND_CPU", "KIND_GPU"))
    python_model(tmp_path, "mixed", config=PY_CONFIG.format(name="mixed").replace(
        "instance_group [ { kind: KIND_CPU } ]", "instance_group [ { kind: KIND_CPU }, { kind: KIND_GPU count: 2 } ]"))
    models = validate_repository(tmp_path).models
    assert models["auto"].instance_kinds == frozenset({"KIND_AUTO"}) and not models["auto"].uses_gpu()
    assert models["gpu"].uses_gpu()
    assert models["mixed"].instance_kinds == frozenset({"KIND_CPU", "KIND_GPU"}) and models["mixed"].uses_gpu()


def test_all_problems_reported_together(tmp_path):
    python_model(tmp_path, "ok")
    python_model(tmp_path, "bad_syntax", config='name: "bad_syntax"\nbackend: "python"\ninput [ { name: "IN" data_type: TYPE_NOPE } ]\n')
    python_model(tmp_path, "mismatch", name="something_else")
    python_model(tmp_path, "noversion", versions=())
    python_model(tmp_path, "nomodel", model_py=None)
    ensemble(tmp_path, "ens", '    { model_name: "ghost" model_version: -1 input_map { key: "IN" value: "X" } output_map { key: "OUT" value: "Y" } }')
    with pytest.raises(ModelRepositoryError) as info:
        validate_repository(tmp_path)
    err = info.value
    models = {p.model for p in err.problems}
    assert models == {"bad_syntax", "mismatch", "noversion", "nomodel", "ens"}
    text = str(err)
    assert len(text.splitlines()) == len(err.problems) >= 5
    assert f"{tmp_path / 'bad_syntax' / 'config.pbtxt'}:3: model 'bad_syntax': " in text
    for line in text.splitlines():
        assert "model '" in line and "(fix: " in line


def test_missing_repository(tmp_path):
    problems = problems_of(tmp_path / "nope")
    assert "does not exist" in problems[0].message


def test_special_file_is_refused(tmp_path):
    python_model(tmp_path, "m")
    os.mkfifo(tmp_path / "m" / "1" / "pipe")
    p = only(problems_of(tmp_path), "not a regular file")
    assert p.model == "m" and p.file.endswith("m/1/pipe")


RELOCATABLE_ACTIVATE = f"{RELOCATABLE_VIRTUAL_ENV}\nexport VIRTUAL_ENV\n"


def packed_env(path: Path, python: str = "3.11", activate: str | None = RELOCATABLE_ACTIVATE) -> None:
    import io
    import tarfile
    with tarfile.open(path, "w:gz") as tar:
        members = {f"lib/python{python}/site-packages/extra.py": "# packed\n"}
        if activate is not None:
            members["./bin/activate"] = activate
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


ENV_PARAM = 'parameters: {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{value}" }} }}\n'


def test_execution_env_python_version_is_read_from_the_archive(tmp_path):
    d = python_model(tmp_path, "m", config=PY_CONFIG.format(name="m") +
                     ENV_PARAM.format(value="$$TRITON_MODEL_DIRECTORY/env.tar.gz"))
    packed_env(d / "env.tar.gz", "3.10")
    assert validate_repository(tmp_path).models["m"].execution_env_python == "3.10"


@pytest.mark.parametrize("value, make, needle", [
    ("/opt/envs/env.tar.gz", None, "outside the model folder"),
    ("$$TRITON_MODEL_DIRECTORY/env.tar.gz", None, "archive is missing"),
    ("$$TRITON_MODEL_DIRECTORY/env.tar.gz", dict(activate=None), "no bin/activate"),
    # what `python3 -m venv /build/env` writes: the folder is gone once Triton extracts the archive elsewhere
    ("$$TRITON_MODEL_DIRECTORY/env.tar.gz", dict(activate='deactivate nondestructive\nVIRTUAL_ENV="/build/env"\n'
                                                         'export VIRTUAL_ENV\n'),
     "bin/activate names the folder the environment was made in (/build/env)"),
])
def test_execution_env_problems(tmp_path, value, make, needle):
    d = python_model(tmp_path, "m", config=PY_CONFIG.format(name="m") + ENV_PARAM.format(value=value))
    if make is not None:
        packed_env(d / "env.tar.gz", **make)
    assert only(problems_of(tmp_path), needle).model == "m"


def test_preflight_refuses_env_python_that_does_not_match_the_host(tmp_path):
    from types import SimpleNamespace

    from tritonfleet.triton.facts import Facts
    from tritonfleet.triton.layout import preflight_problems
    d = python_model(tmp_path, "m", config=PY_CONFIG.format(name="m") +
                     ENV_PARAM.format(value="$$TRITON_MODEL_DIRECTORY/env.tar.gz"))
    packed_env(d / "env.tar.gz", "3.10")
    repo = validate_repository(tmp_path)
    bundle = SimpleNamespace(bundle_id="b", python_versions=("3.10", "3.11"))
    host = Facts(init="systemd", python_version="3.11")
    problems = preflight_problems(host, bundle, repo)
    assert len(problems) == 1 and "Python 3.10 environment" in problems[0] and "3.11" in problems[0]
    assert preflight_problems(Facts(init="systemd", python_version="3.10"), bundle, repo) == []
