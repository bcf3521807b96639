"""Smoke specs (tritonfleet/triton/smokespec.py) and the smoke test's use of them, without a server: reading a spec,
refusing one that does not fit its model at validation (file and line), comparing answers, the requests each kind
of model gets (sequence, decoupled), and the sync-models playbook waiting and smoke-testing after its restart."""

from __future__ import annotations

import shutil
import subprocess
import textwrap

import numpy as np
import pytest

from tritonfleet.engine.inventory import Host
from tritonfleet.engine.playbook import load_playbook
from tritonfleet.engine.runner import HostRun, run_plays
from tritonfleet.modules import MODULES
from tritonfleet.paths import REPO_ROOT
from tritonfleet.triton import signatures
from tritonfleet.triton.digest import repository_digest
from tritonfleet.triton.models import ModelRepositoryError, validate_repository
from tritonfleet.triton.smoke import (ModelSmoke, SmokeReport, answer_differences, build_inputs, grpc_answers_as_http,
                                     sequence_request, spec_inputs, stream_differences)
from tritonfleet.triton.smokespec import (SpecError, load_spec, parse_spec, remote_specs, remote_specs_command,
                                          repository_specs)

EXAMPLES = REPO_ROOT / "examples" / "models"


@pytest.fixture
def repo(tmp_path):
    """A copy of the example repository, whose specs a test may rewrite."""
    copy = tmp_path / "models"
    shutil.copytree(EXAMPLES, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def problems_of(repo) -> list[str]:
    with pytest.raises(ModelRepositoryError) as caught:
        validate_repository(repo)
    return [str(p) for p in caught.value.problems]


def write(path, text: str) -> None:
    path.write_text(textwrap.dedent(text))


# --------------------------------------------------------------------------------------------------------------
# reading


def test_examples_specs_read_with_shapes_from_nesting_and_every_form(repo):
    specs = repository_specs(validate_repository(repo))
    assert sorted(specs) == ["add_sub", "add_sub_chain", "running_sum", "str_upper", "token_stream"]
    add_sub = specs["add_sub"]
    assert add_sub.file == "add_sub/smoke.yaml"
    assert add_sub.inputs["INPUT0"].shape == (4,) and add_sub.inputs["INPUT0"].values == (1, 2, 3, 4)
    assert add_sub.outputs["OUTPUT1"].tolerance == 1e-6 and add_sub.outputs["OUTPUT1"].line == 7
    assert specs["add_sub_chain"].file == "add_sub_chain/smoke.json"  # JSON reads as YAML does
    assert specs["str_upper"].inputs["TEXT"].shape == (1, 2)
    assert [list(r["TOKEN"].values) for r in specs["token_stream"].responses] == [["stream"], ["three"], ["words"]]
    assert specs["token_stream"].outputs is None and specs["running_sum"].responses is None
    assert specs["str_upper"].inputs_shown() == 'TEXT=[["hello", "grüß"]]'


def test_explicit_shape_reshapes_flat_data_and_arrays_take_the_model_datatype():
    spec = parse_spec({"inputs": {"X": {"data": [1, 2, 3, 4, 5, 6], "shape": [2, 3], "datatype": "INT16"},
                                  "T": ["a", "ü"], "B": [True, False]}, "outputs": {}}, "m", "m/smoke.yaml")
    x = spec.inputs["X"].array("INT16")
    assert x.dtype == np.int16 and x.shape == (2, 3) and x.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert spec.inputs["T"].array("BYTES").tolist() == [b"a", "ü".encode()]
    assert spec.inputs["B"].array("BOOL").dtype == np.bool_
    assert parse_spec({"responses": []}, "m", "f").responses == ()


@pytest.mark.parametrize("text, line, words", [
    ("inputs: {X: [1]}\nexpected: {Y: [1]}\n", 2, "unknown key(s) expected"),
    ("inputs:\n  X: [[1, 2], [3]]\n", 2, "ragged"),
    ("inputs:\n  X:\n    values: [1]\n", 2, "has no data"),
    ("inputs:\n  X:\n    data: [1]\n    colour: red\n", 4, "unknown key(s) colour"),
    ("inputs:\n  X:\n    data: [1]\n    datatype: TYPE_FP32\n", 4, "datatype 'TYPE_FP32' is not one"),
    ("inputs:\n  X:\n    data: [1, 2, 3]\n    shape: [2, 2]\n", 4, "holds 4 value(s), data has 3"),
    ("inputs:\n  X:\n    data: [1]\n    tolerance: 0.1\n", 4, "only expected outputs are compared"),
    ("outputs:\n  Y:\n    data: [1]\n    tolerance: -1\n", 4, "not a number of 0 or more"),
    ("outputs: {Y: [1]}\nresponses: []\n", 2, "both `outputs` and `responses`"),
    ("responses: {Y: [1]}\n", 1, "`responses` is not a list"),
    ("inputs: [1, 2]\n", 1, "not a mapping of tensor names"),
    ("- just a list\n", 1, "a smoke spec is a mapping"),
    ("inputs: {X: [1}\n", 1, "YAML syntax error"),
])
def test_a_spec_that_does_not_read_names_its_line(tmp_path, text, line, words):
    path = tmp_path / "m" / "smoke.yaml"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_spec("m", path)
    assert caught.value.file == "m/smoke.yaml"
    assert any(found_line == line and words in message for found_line, message, _ in caught.value.problems), \
        caught.value.problems


def test_specs_on_a_host_are_read_by_one_shell_command(repo):
    """The command the smoke module sends to a host serving another repository, run here by sh."""
    out = subprocess.run(["sh", "-c", remote_specs_command(str(repo))], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    remote, local = remote_specs(out), repository_specs(validate_repository(repo))
    assert sorted(remote) == sorted(local)
    for name, spec in local.items():
        assert remote[name].file == spec.file
        assert {n: (t.shape, t.values) for n, t in remote[name].inputs.items()} == \
               {n: (t.shape, t.values) for n, t in spec.inputs.items()}
    empty = subprocess.run(["sh", "-c", remote_specs_command(str(repo / "no-such-folder"))], capture_output=True,
                           text=True, timeout=30)
    assert empty.returncode == 0 and remote_specs(empty.stdout) == {}


# --------------------------------------------------------------------------------------------------------------
# validation against config.pbtxt


def test_examples_with_their_specs_validate_and_the_digest_covers_the_spec(repo):
    before = validate_repository(repo).digest
    write(repo / "add_sub" / "smoke.yaml", (repo / "add_sub" / "smoke.yaml").read_text().replace("5]", "6]"))
    assert validate_repository(repo).digest != before == repository_digest(EXAMPLES.resolve())


@pytest.mark.parametrize("model, text, line, words", [
    ("add_sub", "inputs:\n  INPUT0: [1, 2, 3, 4]\n  INPUT9: [1, 2, 3, 4]\n", 3,
     "input 'INPUT9' is not an input of the model"),
    ("add_sub", "inputs:\n  INPUT0: [1, 2, 3, 4]\n  INPUT1: [1, 2, 3]\n", 3,
     "input 'INPUT1' has shape [3]; config.pbtxt declares [4]"),
    ("add_sub", "inputs:\n  INPUT0: [1, 2, 3, 4]\n  INPUT1:\n    data: [1, 2, 3, 4]\n    datatype: FP64\n", 3,
     "input 'INPUT1' is given as FP64; config.pbtxt declares FP32"),
    ("add_sub", "inputs:\n  INPUT0: [1, 2, 3, 4]\n  INPUT1: [1, 2, 3, x]\n", 3, "'x' is not a FP32 value"),
    ("add_sub", "inputs:\n  INPUT0: [1, 2, 3, 4]\n", 1, "required input(s) INPUT1 not given"),
    ("add_sub", "outputs:\n  OUTPUT0: [[1, 2, 3, 4]]\n", 2, "output 'OUTPUT0' has shape [1, 4]; config.pbtxt "
     "declares [4]"),
    ("add_sub", "outputs:\n  NOPE: [1]\n", 2, "output 'NOPE' is not an output of the model"),
    ("add_sub", "responses:\n  - OUTPUT0: [1, 2, 3, 4]\n", 1, "`responses` is for a decoupled model"),
    ("str_upper", "inputs:\n  TEXT: [[\"a\"], [\"b\"], [\"c\"], [\"d\"], [\"e\"], [\"f\"], [\"g\"], [\"h\"], [\"i\"]]\n",
     2, "has batch size 9; the model takes 1 to 8"),
    ("str_upper", "inputs:\n  TEXT: [\"no batch dimension\"]\n", 2, "declares [batch, -1]"),
    ("str_upper", "inputs:\n  TEXT: [[1]]\n", 2, "1 is not a BYTES value"),
    ("token_stream", "inputs:\n  PROMPT: [\"a\"]\noutputs:\n  TOKEN: [\"a\"]\n", 3, "the model is decoupled"),
    ("running_sum", "inputs:\n  VALUE: [[1]]\n  START: [[1]]\n", 3, "a sequence control: Triton sets it"),
    ("running_sum", "inputs:\n  VALUE: [[1], [2]]\n", 2, "a sequence model takes one request per sequence step"),
    ("running_sum", "inputs:\n  VALUE: [[3000000000]]\n", 2, "3000000000 is not a INT32 value"),
])
def test_a_spec_that_does_not_fit_its_model_is_refused_with_file_and_line(repo, model, text, line, words):
    for old in repo.joinpath(model).glob("smoke.*"):
        old.unlink()
    (repo / model / "smoke.yaml").write_text(text)
    problems = problems_of(repo)
    expected = f"{repo / model / 'smoke.yaml'}:{line}: model '{model}': "
    assert any(p.startswith(expected) and words in p for p in problems), problems


def test_two_spec_files_and_a_yaml_error_are_refused(repo):
    (repo / "add_sub" / "smoke.json").write_text("{}")
    (repo / "str_upper" / "smoke.yaml").write_text("inputs:\n  TEXT: [[\"a\"]\n")
    problems = problems_of(repo)
    assert any("add_sub/smoke.json: model 'add_sub': add_sub/ has 2 smoke specs" in p for p in problems), problems
    assert any("str_upper/smoke.yaml:" in p and "YAML syntax error" in p for p in problems), problems


def test_a_config_completed_by_the_model_is_checked_on_the_server_only(tmp_path):
    """config.pbtxt with only `backend`: auto_complete_config declares the tensors, so names cannot be checked here."""
    model = tmp_path / "models" / "auto"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('backend: "python"\n')
    (model / "1" / "model.py").write_text("class TritonPythonModel:\n    def auto_complete_config(config):\n"
                                          "        return config\n\n    def execute(self, requests):\n"
                                          "        return []\n")
    (model / "smoke.yaml").write_text("inputs: {ANYTHING: [1]}\noutputs: {WHATEVER: [2]}\n")
    assert validate_repository(tmp_path / "models").models["auto"]
    assert list(repository_specs(validate_repository(tmp_path / "models"))["auto"].inputs) == ["ANYTHING"]


# --------------------------------------------------------------------------------------------------------------
# answers


class Answer:
    """An InferResult's as_numpy, from arrays."""

    def __init__(self, **outputs):
        self.outputs = outputs

    def as_numpy(self, name):
        return self.outputs.get(name)


def test_answers_match_exactly_or_within_the_tolerance(repo):
    spec = repository_specs(validate_repository(repo))["add_sub"]
    declared = {"OUTPUT0": "FP32", "OUTPUT1": "FP32"}
    right = Answer(OUTPUT0=np.array([1.5, 2.5, 4, 5], np.float32), OUTPUT1=np.array([0.5, 1.5, 2, 3.0000005],
                                                                                      np.float32))
    assert answer_differences(spec.outputs, right, declared) == []
    wrong = Answer(OUTPUT0=np.array([1.5, 2.5, 4, 6], np.float32), OUTPUT1=np.array([0.5, 1.5, 2, 3.1], np.float32))
    assert answer_differences(spec.outputs, wrong, declared) == [
        "output 'OUTPUT0' is [1.5, 2.5, 4. , 6. ]; expected [1.5, 2.5, 4. , 5. ] (first difference at [3]: "
        "6.0 instead of 5.0)",
        "output 'OUTPUT1' is [0.5, 1.5, 2. , 3.1]; expected [0.5, 1.5, 2. , 3. ] (first difference at [3]: "
        f"{float(np.float32(3.1))!r} instead of 3.0, tolerance 1e-06)"]
    assert answer_differences(spec.outputs, Answer(OUTPUT0=np.zeros((1, 4), np.float32)), declared) == [
        "output 'OUTPUT0' has shape [1, 4] ([[0., 0., 0., 0.]]); expected [4]",
        "output 'OUTPUT1' is missing from the answer"]


def test_text_answers_and_streams_compare_in_order(repo):
    specs = repository_specs(validate_repository(repo))
    upper = Answer(UPPER=np.array([[b"HELLO", "GRÜSS".encode()]], dtype=object))
    assert answer_differences(specs["str_upper"].outputs, upper, {"UPPER": "BYTES"}) == []
    stream = specs["token_stream"]
    tokens = [Answer(TOKEN=np.array([w], dtype=object)) for w in (b"stream", b"three", b"words")]
    assert stream_differences(stream, tokens, {"TOKEN": "BYTES"}) == []
    assert stream_differences(stream, tokens[:2], {"TOKEN": "BYTES"}) == [
        "streamed 2 response(s); token_stream/smoke.yaml expects 3"]
    assert stream_differences(stream, [tokens[1], tokens[0], tokens[2]], {"TOKEN": "BYTES"}) == [
        "response 1: output 'TOKEN' is [b'three']; expected [b'stream'] (first difference at [0]: b'three' instead "
        "of b'stream')",
        "response 2: output 'TOKEN' is [b'stream']; expected [b'three'] (first difference at [0]: b'stream' instead "
        "of b'three')"]


def test_spec_inputs_are_sent_as_given_and_an_unknown_one_is_named(repo):
    spec = repository_specs(validate_repository(repo))["add_sub"]
    metadata = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [4]},
                           {"name": "INPUT1", "datatype": "FP32", "shape": [4]}]}
    given = spec_inputs(spec, metadata)
    built = build_inputs(metadata, {"max_batch_size": 0}, "grpc", given)
    assert [(t.name(), t.shape(), t.datatype()) for t in built] == [("INPUT0", [4], "FP32"), ("INPUT1", [4], "FP32")]
    assert np.frombuffer(built[0]._get_content(), np.float32).tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="gives input.s. INPUT0, INPUT1, which the model does not have"):
        spec_inputs(spec, {"inputs": [{"name": "X", "datatype": "FP32", "shape": [4]}]})


# --------------------------------------------------------------------------------------------------------------
# the request each kind of model gets


def sequence_config(corrid: str | None) -> dict:
    controls = [{"name": "START", "control": [{"kind": "CONTROL_SEQUENCE_START", "data_type": "TYPE_INVALID"}]}]
    if corrid:
        controls.append({"name": "CORRID", "control": [{"kind": "CONTROL_SEQUENCE_CORRID", "data_type": corrid}]})
    return {"sequence_batching": {"control_input": controls}}


@pytest.mark.parametrize("corrid, low, high", [
    ("TYPE_UINT64", 1 << 62, 1 << 63), (None, 1 << 62, 1 << 63), ("TYPE_INT64", 1 << 62, 1 << 63),
    ("TYPE_UINT32", 1 << 31, 1 << 32), ("TYPE_INT32", 1 << 30, 1 << 31),
])
def test_a_sequence_model_gets_a_one_request_sequence_under_a_fresh_id_of_its_corrid_type(corrid, low, high):
    first, second = sequence_request(sequence_config(corrid)), sequence_request(sequence_config(corrid))
    assert first["sequence_start"] is first["sequence_end"] is True
    assert low <= first["sequence_id"] < high and first["sequence_id"] != second["sequence_id"]


def test_a_string_corrid_gets_a_text_id_and_other_models_no_sequence():
    request = sequence_request(sequence_config("TYPE_STRING"))
    assert request["sequence_id"].startswith("tritonfleet-smoke-") and len(request["sequence_id"]) <= 128
    assert sequence_request({"max_batch_size": 4}) == {}


def test_grpc_config_reads_as_http_for_sequence_controls_and_decoupled():
    from tritonclient.grpc import model_config_pb2 as mc, service_pb2

    config = mc.ModelConfig(name="s", sequence_batching=mc.ModelSequenceBatching(control_input=[
        mc.ModelSequenceBatching.ControlInput(name="CORRID", control=[mc.ModelSequenceBatching.Control(
            kind=mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_CORRID, data_type=mc.TYPE_STRING)])]),
        model_transaction_policy=mc.ModelTransactionPolicy(decoupled=True))
    _, answer = grpc_answers_as_http(service_pb2.ModelMetadataResponse(), config)
    assert answer["model_transaction_policy"] == {"decoupled": True}
    assert answer["sequence_batching"] == {"control_input": [{"name": "CORRID", "control": [
        {"kind": "CONTROL_SEQUENCE_CORRID", "data_type": "TYPE_STRING"}]}]}
    assert "sequence_batching" not in grpc_answers_as_http(service_pb2.ModelMetadataResponse(),
                                                           mc.ModelConfig(name="plain"))[1]


def test_failures_name_the_version_only_where_a_model_has_several():
    report = SmokeReport("h", live=True, ready=True, models=[
        ModelSmoke("versioned", "1", "READY", "", ok=True),
        ModelSmoke("versioned", "2", "READY", "", error="answer over grpc: output 'Y' is [2]; expected [3]"),
        ModelSmoke("single", "1", "UNAVAILABLE", "unloaded")])
    assert report.failures() == ["model 'versioned' version 2: answer over grpc: output 'Y' is [2]; expected [3]",
                                 "model 'single' is UNAVAILABLE: unloaded"]
    assert report.failures_of({"versioned", "single", "other"}) == {
        "versioned": "version 2: answer over grpc: output 'Y' is [2]; expected [3]",
        "single": "UNAVAILABLE: unloaded"}


# --------------------------------------------------------------------------------------------------------------
# sync-models: in control mode none/poll, the restart, then every model ready and answering


def test_sync_models_alone_restarts_then_waits_for_readiness_then_smoke_tests(tmp_path):
    from test_module_cases import FIXTURES, FakeHost, FakeServer, QuietReporter, context_for

    for mode, expected in (("none", ["wait_ready 180", "smoke 30"]), ("explicit", ["control unload= load=",
                                                                                    "smoke 30"])):
        conn = FakeHost(Host("gpu01", {"ansible_host": "10.0.0.1"}, ("lab",)), {})
        server = FakeServer({"wait_ready": [True, []], "control": [{}], "smoke": [{"models": []}]})
        facts = "init=systemd\nlive_models=/srv/tritonfleet/models-releases/fedcba9876543210\n" + \
            "server_cmdline=/opt/tritonserver/bin/tritonserver --model-control-mode=explicit\n" * (mode == "explicit")
        ctx = context_for({"vars": {"triton_model_control_mode": mode}, "facts": facts}, conn, server)
        ctx.vars["model_repository"] = str(FIXTURES / "models")
        run = HostRun("gpu01")
        run_plays(load_playbook(REPO_ROOT / "playbooks" / "sync-models.yml", MODULES), ctx, run, (),
                  QuietReporter(), MODULES)
        assert not any(s["status"] == "failed" for s in run.steps), run.steps
        assert server.calls == expected, mode
        handlers = [s["module"] for s in run.steps if s["handler"]]
        assert handlers == (["systemd", "wait_ready", "smoke"] if mode == "none" else []), mode


def test_signature_rows_read_the_lines_triton_logs():
    """Beyond each row's own example: the reaper's line at --log-verbose=1 (server#8449), which names the cause of
    the refusal that follows it."""
    line = 'I1009 03:39:04.458373 42 sequence_batch_scheduler.cc:1079] "Reaper: CORRID 1: max sequence idle exceeded"'
    assert signatures.match(line).id == "sequence_not_started"


def test_a_deploy_that_changed_models_smoke_tests_once(tmp_path):
    """sync-models' handler smoke-tests after the restart; smoke.yml's step, with nothing changed since, asks the
    server nothing again (the deploy's shape: sync, flush handlers, smoke)."""
    from test_module_cases import FIXTURES, FakeHost, FakeServer, QuietReporter, context_for

    playbook = tmp_path / "deploy-like.yml"
    playbook.write_text(f"- import_playbook: {REPO_ROOT / 'playbooks' / 'sync-models.yml'}\n"
                        "- hosts: all\n  tasks:\n    - meta: flush_handlers\n"
                        f"- import_playbook: {REPO_ROOT / 'playbooks' / 'smoke.yml'}\n")
    conn = FakeHost(Host("gpu01", {"ansible_host": "10.0.0.1"}, ("lab",)), {})
    server = FakeServer({"wait_ready": [True, []], "smoke": [{"models": []}]})
    ctx = context_for({"vars": {}, "facts": "init=systemd\nlive_models=/srv/tritonfleet/models-releases/"
                                            "fedcba9876543210\n"}, conn, server)
    ctx.vars["model_repository"] = str(FIXTURES / "models")
    run = HostRun("gpu01")
    run_plays(load_playbook(playbook, MODULES), ctx, run, (), QuietReporter(), MODULES)
    assert not any(s["status"] == "failed" for s in run.steps), run.steps
    assert server.calls == ["wait_ready 180", "smoke 30"]
    smokes = [s for s in run.steps if s["module"] == "smoke"]
    assert [s["handler"] for s in smokes] == [True, False]
    assert smokes[1]["msg"] == "every model answered this run's smoke test, and nothing changed since"
    assert smokes[1]["data"] == smokes[0]["data"]  # the same answers, for whoever reads the last step

    # a step that changes the host after the first smoke test: the second asks again
    ctx.answered = (ctx.changes - 1, {})
    run_plays(load_playbook(REPO_ROOT / "playbooks" / "smoke.yml", MODULES), ctx, HostRun("gpu01"), (),
              QuietReporter(), MODULES)
    assert server.calls == ["wait_ready 180", "smoke 30", "smoke 30"]
