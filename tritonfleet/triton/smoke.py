"""Remote smoke test of a Triton server, run from the control machine with tritonclient.

Checks, over HTTP and gRPC: the server is live and ready; every model version in the repository index
is READY (a model that is not shows the `reason` the server gives, e.g. the Python error that stopped
it loading); and each READY version answers one real inference per protocol, returning every declared
output with the declared datatype. The inputs are built from the model's metadata and the config the
server completed, or taken from the model's smoke spec (`smokespec`), whose expected outputs the answer
must then match.

The request is the one the model's kind needs: a sequence-batching model gets a one-request sequence
(start and end) under a fresh correlation ID of the datatype its CORRID control takes; a decoupled model
is asked over a gRPC stream, its responses collected until the final flag (HTTP does not serve
decoupled models: noted, not failed).

Every call has a bounded timeout, every loop a bounded count, so a hung host cannot hang a deploy.
"""

from __future__ import annotations

import queue
import random
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tritonfleet.triton import apikey, tls
from tritonfleet.triton.endpoint import Endpoint, short_error
from tritonfleet.triton.smokespec import FLOAT_TYPES, INT_RANGES, SmokeSpec, Tensor, numpy_dtype

PROTOCOLS = ("http", "grpc")
DYNAMIC_DIM = 1  # size given to a -1 dimension
MAX_STREAM_RESPONSES = 10_000  # a decoupled model streaming more to one smoke request is not answering it
# gRPC honours http_proxy/https_proxy from the environment; smoke traffic goes straight to the host.
_GRPC_CHANNEL_ARGS = [("grpc.enable_http_proxy", 0)]
# Bits of a fresh correlation ID for each CORRID datatype (sequence_request).
_CORRID_BITS = {"TYPE_INT32": 31, "TYPE_UINT32": 32, "TYPE_INT64": 63, "TYPE_UINT64": 63}
HTTP_DECOUPLED = "not applicable: the model is decoupled, which Triton serves over gRPC streams only"


class SkipInference(Exception):
    """An input cannot be built with this tritonclient (e.g. BF16 without ml_dtypes support)."""


@dataclass
class ModelSmoke:
    name: str
    version: str
    state: str
    reason: str
    ok: bool = False
    error: str = ""
    latency_ms: dict[str, float] = field(default_factory=dict)  # {"http": 1.2, "grpc": 0.9}
    notes: list[str] = field(default_factory=list)  # e.g. inference skipped for BF16, HTTP not applicable
    checked: bool = False  # the answers were compared with the model's smoke spec


@dataclass
class SmokeReport:
    address: str
    live: bool = False
    ready: bool = False
    models: list[ModelSmoke] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.live and self.ready and not self.error and all(m.ok for m in self.models)

    def failures(self) -> list[str]:
        """One human line per problem."""
        lines: list[str] = []
        if self.error:
            lines.extend(f"server at {self.address}: {e}" for e in self.error.splitlines() if e)
        if not self.live:
            lines.append(f"server at {self.address} is not live")
        elif not self.ready:
            lines.append(f"server at {self.address} is not ready")
        several = self._with_several_versions()
        for m in self.models:
            who = f"model '{m.name}'" + (f" version {m.version}" if m.name in several else "")
            lines.extend(f"{who}: {e}" if m.state == "READY" else f"{who} is {e}" for e in _problems(m))
        return lines

    def failures_of(self, models: Collection[str]) -> dict[str, str]:
        """{model: what went wrong} for the failed versions of these models, on one line each."""
        several = self._with_several_versions()
        failed: dict[str, list[str]] = {}
        for m in self.models:
            if m.name in models and not m.ok:
                version = f"version {m.version}: " if m.name in several else ""
                failed.setdefault(m.name, []).extend(version + problem for problem in _problems(m))
        return {name: "; ".join(problems) for name, problems in failed.items()}

    def _with_several_versions(self) -> set[str]:
        """Models the report holds more than one version of: their messages name the version."""
        seen: set[str] = set()
        return {m.name for m in self.models if m.name in seen or seen.add(m.name)}


def _problems(m: ModelSmoke) -> list[str]:
    if m.state != "READY":
        return [f"{m.state or 'not loaded'}: {m.reason or 'no reason given'}"]
    return (m.error or "failed").splitlines() if not m.ok else []


# --------------------------------------------------------------------------------------------
# inputs


def grpc_answers_as_http(metadata, config) -> tuple[dict, dict]:
    """gRPC's ModelMetadataResponse and ModelConfig as the dicts HTTP answers with (the parts used here).

    Read from the messages directly: protobuf's JSON printer (as_json=True) cost more CPU than the calls.
    """
    def tensor(t) -> dict:
        return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}

    answer = {"max_batch_size": config.max_batch_size,
              "input": [{"name": i.name, "optional": i.optional, **({"dims": list(i.dims)} if i.dims else {})}
                        for i in config.input],
              "model_transaction_policy": {"decoupled": config.model_transaction_policy.decoupled}}
    if config.HasField("sequence_batching"):
        from tritonclient.grpc.model_config_pb2 import DataType, ModelSequenceBatching

        answer["sequence_batching"] = {"control_input": [
            {"name": c.name, "control": [{"kind": ModelSequenceBatching.Control.Kind.Name(k.kind),
                                          "data_type": DataType.Name(k.data_type)} for k in c.control]}
            for c in config.sequence_batching.control_input]}
    return ({"inputs": [tensor(t) for t in metadata.inputs], "outputs": [tensor(t) for t in metadata.outputs]},
            answer)


def _sample(datatype: str, shape: list[int], name: str) -> np.ndarray:
    count = int(np.prod(shape)) if shape else 1
    if datatype == "BOOL":
        flat = np.arange(count) % 2 == 0
    elif datatype == "BYTES":
        flat = np.array([f"tritonfleet-{i}".encode() for i in range(count)], dtype=np.object_)
    elif datatype in FLOAT_TYPES:
        flat = (np.arange(count) * 0.5 + 1.0).astype(numpy_dtype(datatype))
    elif datatype in INT_RANGES:
        flat = (np.arange(count) % 100 + 1).astype(numpy_dtype(datatype))
    elif datatype == "BF16":
        from tritonclient.utils import triton_to_np_dtype

        try:
            bf16 = triton_to_np_dtype("BF16")
        except Exception:  # ml_dtypes missing in an older/newer client
            bf16 = None
        if bf16 is None:
            raise SkipInference(f"input '{name}' is BF16, which this tritonclient cannot build")
        flat = (np.arange(count) * 0.5 + 1.0).astype(np.float32).astype(bf16)
    else:
        raise ValueError(f"input '{name}' has datatype {datatype!r}, which the smoke test does not know")
    return flat.reshape(shape)


def build_inputs(metadata: dict, config: dict, protocol: str, given: Mapping[str, np.ndarray] | None = None) -> list:
    """InferInputs for one inference of a model, from its metadata and config (as HTTP answers them).

    An input in `given` (from the model's smoke spec) is sent as it is. Otherwise dynamic dimensions (-1) become
    DYNAMIC_DIM; a batching model (max_batch_size > 0) gets a batch dimension of 1; optional inputs are left out.
    Raises SkipInference when an input's datatype cannot be built by this tritonclient (BF16 without ml_dtypes).
    """
    if protocol == "http":
        from tritonclient.http import InferInput
    elif protocol == "grpc":
        from tritonclient.grpc import InferInput
    else:
        raise ValueError(f"unknown protocol {protocol!r} (use 'http' or 'grpc')")

    config = config or {}
    given = given or {}
    max_batch_size = int(config.get("max_batch_size", 0) or 0)
    config_inputs = {c.get("name"): c for c in config.get("input", []) or []}

    inputs = []
    for meta in metadata.get("inputs", []) or []:
        name, datatype = meta["name"], meta["datatype"]
        cfg = config_inputs.get(name, {})
        if name in given:
            data = given[name]
        elif cfg.get("optional"):
            continue
        else:
            if "dims" in cfg:
                shape = ([1] if max_batch_size > 0 else []) + [int(d) for d in cfg["dims"]]
            else:
                shape = [int(d) for d in meta.get("shape", [])]
                if max_batch_size > 0 and shape:
                    shape[0] = 1  # metadata includes the batch dimension as -1
            data = _sample(datatype, [DYNAMIC_DIM if d < 0 else d for d in shape], name)
        tensor = InferInput(name, list(data.shape), datatype)
        if protocol == "http":
            tensor.set_data_from_numpy(data, binary_data=True)
        else:
            tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    return inputs


def spec_inputs(spec: SmokeSpec, metadata: dict) -> dict[str, np.ndarray]:
    """The spec's inputs as arrays of the datatypes the server declares; ValueError for one it does not have."""
    datatypes = {m["name"]: m["datatype"] for m in metadata.get("inputs", []) or []}
    unknown = sorted(set(spec.inputs) - set(datatypes))
    if unknown:
        raise ValueError(f"{spec.file} gives input(s) {', '.join(unknown)}, which the model does not have "
                         f"(inputs: {', '.join(sorted(datatypes)) or 'none'})")
    return {name: tensor.array(datatypes[name]) for name, tensor in spec.inputs.items()}


def sequence_request(config: dict) -> dict:
    """For a sequence-batching model, the arguments of a one-request sequence (start and end) under a fresh
    correlation ID of the datatype its CORRID control takes (uint64 when it has none); {} for other models.

    Without them Triton refuses every request to such a model ("must specify a non-zero or non-empty correlation
    ID"). The ID is random, from the upper half of its datatype's range: a client's live sequence under the same ID
    would be ended by the smoke request's start, and clients count up from small IDs.
    """
    batching = config.get("sequence_batching")
    if batching is None:
        return {}
    corrid = next((control.get("data_type") for c in batching.get("control_input", []) or []
                   for control in c.get("control", []) or [] if control.get("kind") == "CONTROL_SEQUENCE_CORRID"),
                  "TYPE_UINT64")
    if corrid == "TYPE_STRING":
        sequence_id: int | str = f"tritonfleet-smoke-{uuid.uuid4().hex}"
    else:
        bits = _CORRID_BITS.get(corrid, 63)
        sequence_id = random.randrange(1 << (bits - 1), 1 << bits)
    return {"sequence_id": sequence_id, "sequence_start": True, "sequence_end": True}


def is_decoupled(config: dict) -> bool:
    return bool((config.get("model_transaction_policy") or {}).get("decoupled"))


# --------------------------------------------------------------------------------------------
# answers


def _shown(array) -> str:
    text = np.array2string(np.asarray(array), threshold=24, edgeitems=3, separator=", ").replace("\n", "")
    return text if len(text) <= 160 else text[:157] + "..."


def _difference(name: str, got, want: np.ndarray, tolerance: float) -> str | None:
    """How output `name` differs from what the spec expects, or None when it matches."""
    if got is None:
        return f"output '{name}' is missing from the answer"
    if got.shape != want.shape:
        return f"output '{name}' has shape {list(got.shape)} ({_shown(got)}); expected {list(want.shape)}"
    if want.dtype.kind == "f":
        same = np.isclose(got.astype(np.float64), want.astype(np.float64), rtol=0.0, atol=tolerance, equal_nan=True)
    else:
        same = got == want
    if np.all(same):
        return None
    at = tuple(int(i) for i in np.argwhere(~np.asarray(same, dtype=bool))[0])
    within = f", tolerance {tolerance:g}" if tolerance else ""
    return (f"output '{name}' is {_shown(got)}; expected {_shown(want)} (first difference at {list(at)}: "
            f"{_scalar(got[at])!r} instead of {_scalar(want[at])!r}{within})")


def _scalar(value):
    """A numpy element as the plain Python value a message shows (6.0, not np.float32(6.0))."""
    return value.item() if isinstance(value, np.generic) else value


def answer_differences(expected: Mapping[str, Tensor], result: Any, datatypes: Mapping[str, str]) -> list[str]:
    """How one answer (an InferResult) differs from the outputs a spec expects, one line per output."""
    found = []
    for name, tensor in expected.items():
        datatype = datatypes.get(name) or tensor.datatype
        if not datatype:
            found.append(f"output '{name}' is not an output of the model (outputs: {', '.join(datatypes) or 'none'})")
            continue
        difference = _difference(name, result.as_numpy(name), tensor.array(datatype), tensor.tolerance)
        if difference:
            found.append(difference)
    return found


def stream_differences(spec: SmokeSpec, responses: list, datatypes: Mapping[str, str]) -> list[str]:
    """How a decoupled model's streamed responses differ from the spec's, in number and in order."""
    expected = list(spec.responses or ())
    if len(responses) != len(expected):
        return [f"streamed {len(responses)} response(s); {spec.file} expects {len(expected)}"]
    return [f"response {i + 1}: {d}" for i, (want, got) in enumerate(zip(expected, responses))
            for d in answer_differences(want, got, datatypes)]


def _datatype_problems(result: Any, protocol: str, declared: Mapping[str, str], every: bool) -> list[str]:
    """Declared outputs missing from an answer (when `every` must be there) or of another datatype."""
    found = []
    for out_name, datatype in declared.items():
        out = result.get_output(out_name)
        got = None if out is None else out["datatype"] if protocol == "http" else out.datatype
        if got is None or result.as_numpy(out_name) is None:
            if every:
                found.append(f"output '{out_name}' is missing from the response")
        elif got != datatype:
            found.append(f"output '{out_name}' is {got}, the model declares {datatype}")
    return found


# --------------------------------------------------------------------------------------------
# server calls


def _grpc_options(endpoint: Endpoint) -> dict:
    """tritonclient's channel and TLS arguments for the endpoint (TLS files on this machine). A failed handshake
    (wrong CA, a certificate for another name, no client certificate for mutual TLS) fails each call at once with
    UNAVAILABLE: calls do not wait for the channel to be ready, and each is bounded by the timeout."""
    t = endpoint.grpc_tls
    if t is None:
        return {"channel_args": _GRPC_CHANNEL_ARGS}
    return {"ssl": True, "root_certificates": t.root_certificates, "private_key": t.private_key,
            "certificate_chain": t.certificate_chain, "channel_args": _GRPC_CHANNEL_ARGS + t.channel_args()}


class _Clients:
    """tritonclient's HTTP and gRPC clients; `api_key` opens the repository index where the host restricts it."""

    def __init__(self, endpoint: Endpoint, timeout_s: float, api_key: str = ""):
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        self.timeout_s, self.api_key = timeout_s, api_key
        self.http = httpclient.InferenceServerClient(
            f"{endpoint.host}:{endpoint.http_port}", connection_timeout=timeout_s, network_timeout=timeout_s)
        self.grpc = grpcclient.InferenceServerClient(f"{endpoint.host}:{endpoint.grpc_port}", **_grpc_options(endpoint))

    def close(self) -> None:
        for client in (self.http, self.grpc):
            try:
                client.close()
            except Exception:
                pass

    def live(self, protocol: str) -> bool:
        if protocol == "http":
            return bool(self.http.is_server_live())
        return bool(self.grpc.is_server_live(client_timeout=self.timeout_s))

    def ready(self, protocol: str) -> bool:
        if protocol == "http":
            return bool(self.http.is_server_ready())
        return bool(self.grpc.is_server_ready(client_timeout=self.timeout_s))

    def index(self) -> list[dict]:
        try:
            return list(self.http.get_model_repository_index(headers=apikey.http_headers(self.api_key)))
        except Exception:
            answer = self.grpc.get_model_repository_index(headers=apikey.grpc_headers(self.api_key), as_json=True,
                                                          client_timeout=self.timeout_s)
            return list(answer.get("models", []))

    def metadata_and_config(self, protocol: str, name: str, version: str) -> tuple[dict, dict]:
        if protocol == "http":
            return (self.http.get_model_metadata(name, version),
                    self.http.get_model_config(name, version))
        return grpc_answers_as_http(self.grpc.get_model_metadata(name, version, client_timeout=self.timeout_s),
                                    self.grpc.get_model_config(name, version, client_timeout=self.timeout_s).config)

    def infer(self, protocol: str, name: str, version: str, inputs: list, output_names: list[str], sequence: dict):
        if protocol == "http":
            from tritonclient.http import InferRequestedOutput

            outputs = [InferRequestedOutput(n, binary_data=True) for n in output_names]
            return self.http.infer(name, inputs, model_version=version, outputs=outputs or None, **sequence)
        from tritonclient.grpc import InferRequestedOutput

        outputs = [InferRequestedOutput(n) for n in output_names]
        return self.grpc.infer(name, inputs, model_version=version, outputs=outputs or None,
                               client_timeout=self.timeout_s, **sequence)

    def stream(self, name: str, version: str, inputs: list, sequence: dict) -> list:
        """The responses of a decoupled model to one request on a gRPC stream, until its final flag.

        The final flag comes alone (`enable_empty_final_response`), so a model that streams nothing is told from
        one that hangs. Bounded by the timeout (for the whole stream) and by MAX_STREAM_RESPONSES.
        """
        answers: queue.Queue = queue.Queue()
        # The stream's own deadline is a backstop a second later, so a model that never finishes is reported as such.
        self.grpc.start_stream(callback=lambda result, error: answers.put((result, error)),
                               stream_timeout=self.timeout_s + 1.0)
        finished = False
        try:
            self.grpc.async_stream_infer(name, inputs, model_version=version, enable_empty_final_response=True,
                                         **sequence)
            responses: list = []
            deadline = time.monotonic() + self.timeout_s
            while len(responses) <= MAX_STREAM_RESPONSES:
                try:
                    result, error = answers.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise TimeoutError(f"no final response within {self.timeout_s:g} s "
                                       f"({len(responses)} response(s) before)") from None
                if error is not None:
                    raise error
                response = result.get_response()
                final = response.parameters["triton_final_response"].bool_param
                if response.outputs or not final:
                    responses.append(result)
                if final:
                    finished = True
                    return responses
            raise RuntimeError(f"more than {MAX_STREAM_RESPONSES} responses to one request without a final one")
        finally:
            self.grpc.stop_stream(cancel_requests=not finished)


def _declared_outputs(metadata: dict) -> dict[str, str]:
    return {o["name"]: o["datatype"] for o in metadata.get("outputs", []) or []}


def _streamed(clients: _Clients, smoke: ModelSmoke, inputs: list, sequence: dict, declared: dict,
              spec: SmokeSpec | None) -> list[str]:
    """A decoupled model's responses to one request on a gRPC stream: their problems."""
    responses = clients.stream(smoke.name, smoke.version, inputs, sequence)
    smoke.notes.append(f"streamed {len(responses)} response(s) over grpc" +
                       (" (valid: a decoupled model may answer with the final flag alone)" if not responses else ""))
    problems = [p for r in responses for p in _datatype_problems(r, "grpc", declared, every=False)]
    if spec and spec.responses is not None:
        problems += stream_differences(spec, responses, declared)
    elif spec and spec.outputs is not None:
        problems.append(f"{spec.file} gives `outputs`, but the model is decoupled: give `responses`")
    return problems


def _answered(clients: _Clients, smoke: ModelSmoke, protocol: str, inputs: list, sequence: dict, declared: dict,
              spec: SmokeSpec | None) -> list[str]:
    """A model's one answer to one request: its problems."""
    result = clients.infer(protocol, smoke.name, smoke.version, inputs, list(declared), sequence)
    problems = _datatype_problems(result, protocol, declared, every=True)
    if spec and spec.outputs is not None:
        problems += answer_differences(spec.outputs, result, declared)
    elif spec and spec.responses is not None:
        problems.append(f"{spec.file} gives `responses`, but the model is not decoupled: give `outputs`")
    return problems


def _ask(clients: _Clients, smoke: ModelSmoke, protocol: str, spec: SmokeSpec | None) -> list[str]:
    """One inference of a model version over one protocol, as its kind needs; the problems found."""
    step = "reading metadata"
    try:
        metadata, config = clients.metadata_and_config(protocol, smoke.name, smoke.version)
        decoupled = is_decoupled(config)
        if decoupled and protocol == "http":
            smoke.notes.append(f"inference over http {HTTP_DECOUPLED}")
            return []
        step = "building inputs"
        inputs = build_inputs(metadata, config, protocol, spec_inputs(spec, metadata) if spec else {})
        declared, sequence = _declared_outputs(metadata), sequence_request(config)
        step = "inference"
        start = time.perf_counter()
        if decoupled:
            problems = _streamed(clients, smoke, inputs, sequence, declared, spec)
        else:
            problems = _answered(clients, smoke, protocol, inputs, sequence, declared, spec)
        smoke.latency_ms[protocol] = round((time.perf_counter() - start) * 1000.0, 3)
    except SkipInference as exc:
        note = f"inference over {protocol} skipped: {exc}"
        if note not in smoke.notes:
            smoke.notes.append(note)
        return []
    except Exception as exc:
        return [f"{step} over {protocol} failed: {short_error(exc)}"]
    where = f"over {protocol}" + (f" for {spec.inputs_shown()} ({spec.file})" if spec else "")
    return [f"answer {where}: {p}" for p in problems]


def _smoke_model(clients: _Clients, entry: dict, spec: SmokeSpec | None = None,
                 protocols: Collection[str] = PROTOCOLS) -> ModelSmoke:
    smoke = ModelSmoke(name=str(entry.get("name", "")), version=str(entry.get("version", "") or ""),
                       state=str(entry.get("state", "") or ""), reason=str(entry.get("reason", "") or ""))
    if smoke.state != "READY":
        return smoke
    errors = [problem for protocol in protocols for problem in _ask(clients, smoke, protocol, spec)]
    smoke.error = "\n".join(errors)
    smoke.ok = not errors
    smoke.checked = spec is not None and smoke.ok and bool(smoke.latency_ms)
    return smoke


def smoke_test(endpoint: Endpoint, timeout_s: float = 30.0,
               specs: Mapping[str, SmokeSpec] | None = None, api_key: str = "") -> SmokeReport:
    """Smoke-test the Triton server at `endpoint`; never raises for server-side problems.

    `specs` (model name -> its smoke spec) give a model's inputs and the answer it must return. `timeout_s`
    bounds every single call (connect and network; a decoupled model's whole stream); the number of calls is
    bounded by the number of model versions, so the whole test is bounded too.
    """
    report = SmokeReport(address=str(endpoint))
    specs = specs or {}
    try:
        clients = _Clients(endpoint, timeout_s, api_key)
    except Exception as exc:
        report.error = f"cannot create clients: {short_error(exc)}"
        return report
    errors: list[str] = []
    try:
        live, ready = {}, {}
        for protocol in PROTOCOLS:
            port = endpoint.http_port if protocol == "http" else endpoint.grpc_port
            try:
                live[protocol] = clients.live(protocol)
                ready[protocol] = clients.ready(protocol)
            except Exception as exc:
                live[protocol] = ready[protocol] = False
                hint = tls.explain(str(exc), endpoint.grpc_tls) if protocol == "grpc" else ""
                over = f" over {endpoint.grpc_tls.describe()}" if protocol == "grpc" and endpoint.grpc_tls else ""
                errors.append(f"{protocol} on port {port}{over} does not answer: {short_error(exc)}" +
                              (f" ({hint})" if hint else ""))
        report.live = all(live.values())
        report.ready = all(ready.values())
        if not any(live.values()):
            return report
        try:
            index = clients.index()
        except Exception as exc:
            errors.append(f"cannot read the repository index: {short_error(exc)}")
            return report
        # A protocol that did not answer (a failed TLS handshake, a closed port) is reported once, above, not again
        # for every model; the report is not ok.
        answering = [p for p in PROTOCOLS if live[p]]
        for entry in index[:10_000]:
            report.models.append(_smoke_model(clients, entry, specs.get(str(entry.get("name", ""))), answering))
        return report
    finally:
        report.error = "\n".join(errors)
        clients.close()
