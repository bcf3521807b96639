"""Triton's restricted APIs: the flags and unit tritonfleet writes, the key's handling, and (marked `server`) what a
real 2.51 server answers a caller with and without the key."""

from __future__ import annotations

import base64
import json
import shutil
import time

import pytest

from tritonfleet import secrets
from tritonfleet.engine.inventory import Host
from tritonfleet.engine.jinja import render_text
from tritonfleet.engine.report import redact
from tritonfleet.errors import TritonfleetError
from tritonfleet.fleet.run import host_vars
from tritonfleet.paths import REPO_ROOT
from tritonfleet.triton import apikey
from tritonfleet.triton.endpoint import Endpoint
from tritonfleet.triton.facts import parse_facts
from tritonfleet.triton.server import ServerClient
from tritonfleet.triton.smoke import smoke_test

from test_smoke import EXAMPLES, start_server, triton_root  # noqa: F401  (fixtures)

KEY = "test-key-0123456789abcdefXYZ"


def unit(**extra) -> str:
    hostvars = host_vars(Host("gpu01", {"ansible_host": "10.0.0.1"}, ("lab",)), extra)
    return render_text((REPO_ROOT / "templates" / "tritonserver.service.j2").read_text(), hostvars)


def exec_start(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("ExecStart="))


def test_admin_apis_are_restricted_by_default_and_the_unit_holds_no_key():
    text = unit(triton_api_key=KEY)
    setting = "model-repository,shared-memory,logging,trace:tritonfleet-admin-key=${TRITONFLEET_API_KEY}"
    assert f" --http-restricted-api={setting}" in exec_start(text)
    assert f" --grpc-restricted-protocol={setting}" in exec_start(text)
    assert "EnvironmentFile=/etc/tritonfleet/api-key.env" in text.splitlines()
    assert KEY not in text


def test_no_restricted_api_means_no_flag_and_no_key_file():
    text = unit(triton_restricted_apis=[])
    assert "restricted" not in exec_start(text) and "EnvironmentFile" not in text


def test_metrics_can_be_turned_off():
    assert "--allow-metrics" not in exec_start(unit())
    assert " --allow-metrics=false" in exec_start(unit(triton_allow_metrics="no"))


@pytest.mark.parametrize("var, value, says", [
    ("triton_restricted_apis", ["model-repository", "inference"], "item 2"),
    ("triton_restricted_apis", "model-repository", "not a list"),
    ("triton_api_key", "short", "not a usable API key"),
    ("triton_api_key", "a-key-with:colon-and=equals", "not a usable API key"),
])
def test_bad_security_vars_are_refused(var, value, says):
    with pytest.raises(TritonfleetError, match=says):
        unit(**{var: value})


def test_facts_register_the_key_and_keep_it_out_of_the_vars():
    old = "old-key-from-argv-0123456789"
    facts = parse_facts(f"api_key={KEY}\nserver_cmdline=/opt/tritonserver/bin/tritonserver "
                        f"--http-restricted-api=model-repository,trace:tritonfleet-admin-key={old} --log-verbose=0\n")
    assert facts.api_key == KEY and "api_key" not in facts.as_dict() and "api_key" not in facts.summary()
    assert KEY not in repr(facts)
    assert redact(f"{KEY} and {old}") == f"{secrets.REDACTED} and {secrets.REDACTED}"


def test_server_calls_send_the_key_as_a_header(monkeypatch):
    sent = []

    class Answer:
        status = 200

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, limit):
            return b"[]"

    monkeypatch.setattr("tritonfleet.triton.server._NO_PROXY.open",
                        lambda req, timeout: sent.append(dict(req.header_items())) or Answer())
    assert ServerClient(Endpoint("10.0.0.1", 8000, 8001), api_key=KEY).index() == []
    assert ServerClient(Endpoint("10.0.0.1", 8000, 8001)).index() == []
    assert sent[0].get("Tritonfleet-admin-key") == KEY and "Tritonfleet-admin-key" not in sent[1]


# ---- a real 2.51 server started with the flags tritonfleet writes --------------------------------------------

def marker_model(marker) -> dict:
    """A load request whose files travel in it (file overrides): a Python model that writes `marker` on import."""
    tensors = [{"name": n, "data_type": "TYPE_FP32", "dims": [4]} for n in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")]
    config = {"name": "pwned", "backend": "python", "input": tensors[:2], "output": tensors[2:]}
    model_py = f"open({str(marker)!r}, 'w').write('ran')\n" + (EXAMPLES / "add_sub" / "1" / "model.py").read_text()
    return {"parameters": {"config": json.dumps(config),
                           "file:1/model.py": base64.b64encode(model_py.encode()).decode()}}


@pytest.mark.server
def test_a_real_server_refuses_admin_calls_without_the_key(start_server, tmp_path):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    repo = tmp_path / "models"
    shutil.copytree(EXAMPLES / "add_sub", repo / "add_sub")
    args = [a.replace("${TRITONFLEET_API_KEY}", KEY) for a in apikey.restricted_args(apikey.DEFAULT_RESTRICTED_APIS)]
    server = start_server(repo, args + ["--model-control-mode=explicit", "--load-model=*"])
    endpoint = Endpoint("127.0.0.1", server.http_port, server.grpc_port)
    keyless, keyed = ServerClient(endpoint), ServerClient(endpoint, api_key=KEY)
    ready, index = keyed.wait_ready(timeout_s=120)
    assert ready and [m["state"] for m in index] == ["READY"], server.log_text()

    marker = tmp_path / "pwned"
    load = json.dumps(marker_model(marker)).encode()
    status, body = keyless.request("/v2/repository/models/pwned/load", body=load)
    assert status == 403 and b"This API is restricted, expecting header 'tritonfleet-admin-key'" in body
    assert keyless.request("/v2/repository/models/add_sub/unload", body=b"{}")[0] == 403
    assert keyless.index() is None and keyless.ready()  # health stays open
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    for call in (lambda: grpc.unload_model("add_sub"), lambda: grpc.get_model_repository_index(),
                 lambda: grpc.unload_model("add_sub", headers={apikey.HEADER: KEY})):
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert refused.value.status() == "StatusCode.UNAVAILABLE"
        assert f"expecting header '{apikey.GRPC_HEADER}'" in refused.value.message()
    assert grpc.get_model_repository_index(headers=apikey.grpc_headers(KEY), as_json=True)["models"]
    time.sleep(1)
    assert not marker.exists() and keyed.model_states() == {"add_sub": "READY"}

    report = smoke_test(endpoint, timeout_s=30, api_key=KEY)
    assert report.ok and [m.name for m in report.models] == ["add_sub"], report.failures()
    assert not smoke_test(endpoint, timeout_s=30).ok  # the index is closed to a caller without the key
    assert keyed.control(unload=["add_sub"], load=["add_sub"]) == {}
    assert keyed.model_states() == {"add_sub": "READY"}
    # the door is real: the same request with the key runs the code it carries
    assert keyed.request("/v2/repository/models/pwned/load", body=load, timeout=60)[0] == 200
    assert marker.read_text() == "ran"
