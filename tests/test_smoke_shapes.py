"""Every shape of model Triton serves through the Python backend, smoke-tested on one real tritonserver (127.0.0.1).

One server (module-scoped) loads the example repository and the shapes below: a decoupled model that streams
nothing and one that never sends its final flag, one whose execute() wrongly returns its responses; sequence
models with the oldest strategy and controls of every datatype, with a TYPE_STRING correlation ID, with implicit
state; a BLS model; several versions under a version policy; configs completed by the model (`backend` only, and
no config.pbtxt at all). Each answers the smoke test as its kind needs, or fails it with a known signature.
"""

from __future__ import annotations

import shutil
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

import test_smoke
from tritonfleet.triton import signatures
from tritonfleet.triton.endpoint import Endpoint
from tritonfleet.triton.models import validate_repository
from tritonfleet.triton.server import ServerClient
from tritonfleet.triton.smoke import HTTP_DECOUPLED, smoke_test
from tritonfleet.triton.smokespec import repository_specs

pytestmark = pytest.mark.server
EXAMPLES, Server = test_smoke.EXAMPLES, test_smoke.Server
triton_root = test_smoke.triton_root  # the session's Triton tree, laid out from the wheel (a fixture)

SEQUENCE_CONTROLS = """
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END bool_false_true: [ false, true ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: %s } ] }
  ]"""
SEQUENCE_FLAGS_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            get = lambda name: pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]
            flags = np.array([[get("START"), get("END"), get("READY")]], dtype=np.float32)
            corrid = np.array([[str(get("CORRID"))]], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("FLAGS", flags),
                                                         pb_utils.Tensor("CORRID_SEEN", corrid)]))
        return responses
"""
SEQUENCE_FLAGS_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 4
sequence_batching {{
  {strategy}
  max_sequence_idle_microseconds: 1000000
{controls}
}}
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "FLAGS" data_type: TYPE_FP32 dims: [ 3 ] }}, {{ name: "CORRID_SEEN" data_type: TYPE_STRING dims: [ 1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""
DECOUPLED_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [ {{ name: "X" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "Y" data_type: TYPE_INT32 dims: [ 1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""
AUTO_COMPLETE_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "TEXT", "data_type": "TYPE_STRING", "dims": [-1]})
        config.add_output({"name": "LENGTH", "data_type": "TYPE_INT32", "dims": [1]})
        config.set_max_batch_size(2)
        return config

    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            length = np.full((text.shape[0], 1), text.shape[1], dtype=np.int32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("LENGTH", length)]))
        return responses
"""
VERSIONED_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([
            pb_utils.Tensor("DOUBLE", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() * 2),
            pb_utils.Tensor("VERSION", np.array([{version}], dtype=np.int64))]) for r in requests]
"""

# folder -> {relative path: text}
SHAPES = {
    "seq_oldest": {  # oldest strategy, START fp32, END bool, READY int32, CORRID uint32
        "config.pbtxt": SEQUENCE_FLAGS_CONFIG.format(name="seq_oldest", strategy="oldest { max_candidate_sequences: 4 }",
                                                     controls=SEQUENCE_CONTROLS % "TYPE_UINT32"),
        "1/model.py": SEQUENCE_FLAGS_PY,
        "smoke.yaml": "inputs:\n  X: [[1.5, 2.5]]\noutputs:\n  FLAGS: [[1, 1, 1]]  # one request: start, end, ready\n",
    },
    "seq_string_id": {  # direct strategy, CORRID TYPE_STRING
        "config.pbtxt": SEQUENCE_FLAGS_CONFIG.format(name="seq_string_id", strategy="direct { }",
                                                     controls=SEQUENCE_CONTROLS % "TYPE_STRING"),
        "1/model.py": SEQUENCE_FLAGS_PY,
    },
    "seq_state": {  # implicit state (sequence_batching.state), START only
        "config.pbtxt": """
            name: "seq_state"
            backend: "python"
            max_batch_size: 0
            sequence_batching {
              direct { }
              control_input [ { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] } ]
              state [ { input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
            }
            input [ { name: "X" data_type: TYPE_INT32 dims: [ 1 ] } ]
            output [ { name: "Y" data_type: TYPE_INT32 dims: [ 1 ] } ]
            instance_group [ { count: 1 kind: KIND_CPU } ]
            """,
        "1/model.py": """
            import triton_python_backend_utils as pb_utils


            class TritonPythonModel:
                def execute(self, requests):
                    responses = []
                    for request in requests:
                        x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
                        start = pb_utils.get_input_tensor_by_name(request, "START").as_numpy()[0]
                        state = pb_utils.get_input_tensor_by_name(request, "STATE_IN").as_numpy()
                        y = x if start else x + state
                        responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y),
                                                                     pb_utils.Tensor("STATE_OUT", y)]))
                    return responses
            """,
        "smoke.yaml": "inputs: {X: [7]}\noutputs: {Y: [7]}\n",
    },
    "bls_add_sub": {  # a Python model that calls add_sub through pb_utils.InferenceRequest
        "config.pbtxt": """
            name: "bls_add_sub"
            backend: "python"
            max_batch_size: 0
            input [ { name: "A" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "B" data_type: TYPE_FP32 dims: [ 4 ] } ]
            output [ { name: "SUM" data_type: TYPE_FP32 dims: [ 4 ] } ]
            instance_group [ { count: 1 kind: KIND_CPU } ]
            """,
        "1/model.py": """
            import triton_python_backend_utils as pb_utils


            class TritonPythonModel:
                def execute(self, requests):
                    responses = []
                    for request in requests:
                        inputs = [pb_utils.Tensor("INPUT0", pb_utils.get_input_tensor_by_name(request, "A").as_numpy()),
                                  pb_utils.Tensor("INPUT1", pb_utils.get_input_tensor_by_name(request, "B").as_numpy())]
                        answer = pb_utils.InferenceRequest(model_name="add_sub", inputs=inputs,
                                                           requested_output_names=["OUTPUT0"]).exec()
                        if answer.has_error():
                            responses.append(pb_utils.InferenceResponse(error=answer.error()))
                            continue
                        total = pb_utils.get_output_tensor_by_name(answer, "OUTPUT0").as_numpy()
                        responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SUM", total)]))
                    return responses
            """,
        "smoke.yaml": "inputs: {A: [1, 2, 3, 4], B: [10, 20, 30, 40]}\noutputs: {SUM: [11, 22, 33, 44]}\n",
    },
    "versioned": {  # versions 1 and 2 both served (version_policy all); the spec holds for each
        "config.pbtxt": """
            name: "versioned"
            backend: "python"
            max_batch_size: 0
            version_policy: { all { } }
            input [ { name: "X" data_type: TYPE_INT64 dims: [ 1 ] } ]
            output [ { name: "DOUBLE" data_type: TYPE_INT64 dims: [ 1 ] }, { name: "VERSION" data_type: TYPE_INT64 dims: [ 1 ] } ]
            instance_group [ { count: 1 kind: KIND_CPU } ]
            """,
        "1/model.py": VERSIONED_PY.format(version=1),
        "2/model.py": VERSIONED_PY.format(version=2),
        "smoke.yaml": "inputs: {X: [21]}\noutputs: {DOUBLE: [42]}\n",
    },
    "auto_backend_only": {  # config.pbtxt with only the backend: the model's auto_complete_config does the rest
        "config.pbtxt": 'backend: "python"\n',
        "1/model.py": AUTO_COMPLETE_PY,
        "smoke.yaml": "inputs: {TEXT: [[a, b, c]]}\noutputs: {LENGTH: [[3]]}\n",
    },
    "auto_no_config": {  # no config.pbtxt at all
        "1/model.py": AUTO_COMPLETE_PY,
    },
    "silent_stream": {  # decoupled, answers with the final flag alone
        "config.pbtxt": DECOUPLED_CONFIG.format(name="silent_stream"),
        "1/model.py": """
            import triton_python_backend_utils as pb_utils


            class TritonPythonModel:
                def execute(self, requests):
                    for request in requests:
                        request.get_response_sender().send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    return None
            """,
        "smoke.json": '{"inputs": {"X": [1]}, "responses": []}\n',
    },
    "endless_stream": {  # decoupled, one response and never the final flag
        "config.pbtxt": DECOUPLED_CONFIG.format(name="endless_stream"),
        "1/model.py": """
            import triton_python_backend_utils as pb_utils


            class TritonPythonModel:
                def execute(self, requests):
                    for request in requests:
                        x = pb_utils.get_input_tensor_by_name(request, "X")
                        request.get_response_sender().send(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x.as_numpy())]))
                    return None
            """,
    },
    "decoupled_returns": {  # decoupled, but execute() returns its responses
        "config.pbtxt": DECOUPLED_CONFIG.format(name="decoupled_returns"),
        "1/model.py": """
            import triton_python_backend_utils as pb_utils


            class TritonPythonModel:
                def execute(self, requests):
                    return [pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(r, "X")]) for r in requests]
            """,
    },
}
TIMEOUT_S = 3.0  # per call, and the whole stream of a decoupled model (endless_stream waits it out)


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """The example models and the shapes above (a copy: the stub writes __pycache__ beside model.py)."""
    repo = tmp_path_factory.mktemp("shapes") / "models"
    shutil.copytree(EXAMPLES, repo, ignore=shutil.ignore_patterns("__pycache__"))
    for folder, files in SHAPES.items():
        for rel, text in files.items():
            (repo / folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / folder / rel).write_text(textwrap.dedent(text).lstrip())
    return repo


@pytest.fixture(scope="module")
def server(triton_root, repository, tmp_path_factory):
    started = Server(triton_root, repository, tmp_path_factory.mktemp("log") / "tritonserver.log")
    try:
        ready, index = ServerClient(endpoint(started)).wait_ready(timeout_s=120)
        assert ready, f"not ready; index={index}\n{started.log_text()}"
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def report(server, repository):
    specs = repository_specs(validate_repository(repository))
    return smoke_test(endpoint(server), timeout_s=TIMEOUT_S, specs=specs)


def endpoint(server: Server) -> Endpoint:
    return Endpoint("127.0.0.1", server.http_port, server.grpc_port)


def by_name(report) -> dict:
    return {(m.name, m.version): m for m in report.models}


# --------------------------------------------------------------------------------------------------------------
# the examples


def test_every_example_loads_with_its_spec_beside_it_answers_and_is_checked(report):
    """Triton ignores the spec files in the model folders: each example is READY and its answer matches its spec."""
    examples = {p.name for p in EXAMPLES.iterdir() if p.is_dir()}
    with_spec = {p.parent.name for p in EXAMPLES.glob("*/smoke.*")}
    assert with_spec == {"add_sub", "add_sub_chain", "str_upper", "token_stream", "running_sum"}
    models = by_name(report)
    for name in examples:
        m = models[(name, "1")]
        assert m.state == "READY" and m.ok, report.failures()
        assert m.checked == (name in with_spec), name
        assert set(m.latency_ms) == ({"grpc"} if name == "token_stream" else {"http", "grpc"}), name
    assert models[("token_stream", "1")].notes == [f"inference over http {HTTP_DECOUPLED}",
                                                   "streamed 3 response(s) over grpc"]


def test_a_wrong_answer_fails_naming_the_model_the_input_and_the_difference(report, server, repository):
    specs = repository_specs(validate_repository(repository))
    add_sub = specs["add_sub"]
    wrong = {"add_sub": replace(add_sub, outputs={**add_sub.outputs, "OUTPUT0": replace(
        add_sub.outputs["OUTPUT0"], values=(1.5, 2.5, 4, 6))}),
        "token_stream": replace(specs["token_stream"], responses=specs["token_stream"].responses[:2])}
    failures = smoke_test(endpoint(server), timeout_s=TIMEOUT_S, specs=wrong).failures()
    for protocol in ("http", "grpc"):
        assert (f"model 'add_sub': answer over {protocol} for INPUT0=[1, 2, 3, 4], INPUT1=[0.5, 0.5, 1, 1] "
                "(add_sub/smoke.yaml): output 'OUTPUT0' is [1.5, 2.5, 4. , 5. ]; expected [1.5, 2.5, 4. , 6. ] "
                "(first difference at [3]: 5.0 instead of 6.0)") in failures, failures
    assert ("model 'token_stream': answer over grpc for PROMPT=[\"stream three words\"] (token_stream/smoke.yaml): "
            "streamed 3 response(s); token_stream/smoke.yaml expects 2") in failures, failures


# --------------------------------------------------------------------------------------------------------------
# the other shapes


def test_sequence_models_answer_a_one_request_sequence_under_a_fresh_id(report, server):
    models = by_name(report)
    for name in ("running_sum", "seq_oldest", "seq_state"):
        assert models[(name, "1")].ok and models[(name, "1")].checked, report.failures()
    # running_sum keeps one sum per correlation ID: a three-request sequence adds up
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        sums = []
        for step in range(3):
            value_in = grpcclient.InferInput("VALUE", [1, 1], "INT32")
            value_in.set_data_from_numpy(np.array([[5]], dtype=np.int32))
            answer = client.infer("running_sum", [value_in], sequence_id=(1 << 62) + 17, sequence_start=step == 0,
                                  sequence_end=step == 2)
            sums.append(int(answer.as_numpy("SUM")[0][0]))
        assert sums == [5, 10, 15]
    finally:
        client.close()


def test_decoupled_models_stream_over_grpc_and_are_not_asked_over_http(report):
    models = by_name(report)
    silent = models[("silent_stream", "1")]
    assert silent.ok and silent.checked and set(silent.latency_ms) == {"grpc"}
    assert silent.notes == [f"inference over http {HTTP_DECOUPLED}", "streamed 0 response(s) over grpc (valid: a "
                            "decoupled model may answer with the final flag alone)"]
    endless = models[("endless_stream", "1")]
    assert not endless.ok
    assert endless.error == f"inference over grpc failed: no final response within {TIMEOUT_S:g} s (1 response(s) " \
                            "before)"


def test_bls_versions_and_completed_configs_answer(report):
    models = by_name(report)
    for key in (("bls_add_sub", "1"), ("versioned", "1"), ("versioned", "2"), ("auto_backend_only", "1")):
        assert models[key].ok and models[key].checked, (key, report.failures())
    assert models[("auto_no_config", "1")].ok  # no spec: inputs built from the config the server completed
    assert models[("echo_types", "1")].ok  # every datatype, dynamic dims, batching, an optional input left out


def test_the_report_fails_for_the_broken_shapes_only(report):
    failed = {m.name for m in report.models if not m.ok}
    assert failed == {"endless_stream", "decoupled_returns", "seq_string_id"}, report.failures()
    assert report.live and report.ready and not report.ok


# --------------------------------------------------------------------------------------------------------------
# failures the doctor knows (signatures.py), as this server reported them


def test_decoupled_execute_returning_responses_is_logged_and_known(report, server):
    error = by_name(report)[("decoupled_returns", "1")].error
    assert "is using the decoupled mode and the execute function must return None" in error
    assert signatures.match(error).id == "decoupled_execute_returns"
    logged = [line for line in server.log.read_text(errors="replace").splitlines() if "decoupled_returns" in line]
    assert any(signatures.match(line) and signatures.match(line).id == "decoupled_execute_returns"
               for line in logged), logged


def test_string_correlation_ids_fail_on_this_triton_and_are_known(report):
    """Triton 2.51 sizes a TYPE_STRING CORRID tensor at 128 bytes and then refuses its own padding (core#425)."""
    m = by_name(report)[("seq_string_id", "1")]
    for line, protocol in zip(m.error.splitlines(), ("http", "grpc")):
        assert line.startswith(f"inference over {protocol} failed: ") and "unexpected number of string elements 2 " \
            "for inference input 'CORRID', expecting 1" in line, m.error
        assert signatures.match(line).id == "string_correlation_id_broken"


def test_a_sequence_request_without_id_or_after_the_idle_timeout_is_refused_and_known(server):
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}", network_timeout=TIMEOUT_S)
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        refusals = []
        for module, client in ((httpclient, http), (grpcclient, grpc)):
            value_in = module.InferInput("VALUE", [1, 1], "INT32")
            value_in.set_data_from_numpy(np.array([[5]], dtype=np.int32))
            with pytest.raises(Exception) as caught:
                client.infer("running_sum", [value_in])
            refusals.append(str(caught.value))
        assert all(signatures.match(r).id == "sequence_without_correlation_id" for r in refusals), refusals

        x = grpcclient.InferInput("X", [1, 1], "FP32")
        x.set_data_from_numpy(np.array([[1.0]], dtype=np.float32))
        grpc.infer("seq_oldest", [x], sequence_id=4242, sequence_start=True)
        time.sleep(2.5)  # max_sequence_idle_microseconds is 1 s: the reaper releases the sequence
        with pytest.raises(Exception) as caught:
            grpc.infer("seq_oldest", [x], sequence_id=4242, sequence_end=True)
        assert "inference request for sequence 4242 to model 'seq_oldest' must specify the START flag" in \
            str(caught.value)
        assert signatures.match(str(caught.value)).id == "sequence_not_started"
    finally:
        http.close()
        grpc.close()
