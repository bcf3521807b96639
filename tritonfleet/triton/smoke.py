"""Remote smoke test of a Triton server, run from the control machine with tritonclient.

Checks, over HTTP and gRPC: the server is live and ready; every model in the repository index is
READY (a model that is not shows the `reason` the server gives, e.g. the Python error that stopped
it loading); and each READY model answers one real inference per protocol, with inputs built from
its own metadata and config, returning every declared output with the declared datatype.

Every call has a bounded timeout, every loop a bounded count, so a hung host cannot hang a deploy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tritonfleet.triton.endpoint import Endpoint, short_error

PROTOCOLS = ("http", "grpc")
DYNAMIC_DIM = 1  # size given to a -1 dimension
# gRPC honours http_proxy/https_proxy from the environment; smoke traffic goes straight to the host.
_GRPC_CHANNEL_ARGS = [("grpc.enable_http_proxy", 0)]
_NUMERIC = {
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}


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
    notes: list[str] = field(default_factory=list)  # e.g. inference skipped for BF16


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
        for m in self.models:
            if m.state != "READY":
                lines.append(f"model '{m.name}' is {m.state or 'not loaded'}: {m.reason or 'no reason given'}")
            elif not m.ok:
                for e in (m.error or "failed").splitlines():
                    lines.append(f"model '{m.name}': {e}")
        return lines


# --------------------------------------------------------------------------------------------
# inputs


def grpc_answers_as_http(metadata, config) -> tuple[dict, dict]:
    """gRPC's ModelMetadataResponse and ModelConfig as the dicts HTTP answers with (the parts used here).

    Read from the messages directly: protobuf's JSON printer (as_json=True) cost more CPU than the calls.
    """
    def tensor(t) -> dict:
        return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}

    return ({"inputs": [tensor(t) for t in metadata.inputs], "outputs": [tensor(t) for t in metadata.outputs]},
            {"max_batch_size": config.max_batch_size,
             "input": [{"name": i.name, "optional": i.optional, **({"dims": list(i.dims)} if i.dims else {})}
                       for i in config.input]})


def _sample(datatype: str, shape: list[int], name: str) -> np.ndarray:
    count = int(np.prod(shape)) if shape else 1
    if datatype == "BOOL":
        flat = np.arange(count) % 2 == 0
    elif datatype == "BYTES":
        flat = np.array([f"tritonfleet-{i}".encode() for i in range(count)], dtype=np.object_)
    elif datatype in _NUMERIC:
        kind = _NUMERIC[datatype]
        if np.issubdtype(kind, np.floating):
            flat = (np.arange(count) * 0.5 + 1.0).astype(kind)
        else:
            flat = (np.arange(count) % 100 + 1).astype(kind)
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


def build_inputs(metadata: dict, config: dict, protocol: str) -> list:
    """InferInputs for one inference of a model, from its metadata and config (as HTTP answers them).

    Dynamic dimensions (-1) become DYNAMIC_DIM; a batching model (max_batch_size > 0) gets a batch
    dimension of 1; optional inputs are left out. Raises SkipInference when an input's datatype
    cannot be built by this tritonclient (BF16 without ml_dtypes).
    """
    if protocol == "http":
        from tritonclient.http import InferInput
    elif protocol == "grpc":
        from tritonclient.grpc import InferInput
    else:
        raise ValueError(f"unknown protocol {protocol!r} (use 'http' or 'grpc')")

    config = config or {}
    max_batch_size = int(config.get("max_batch_size", 0) or 0)
    config_inputs = {c.get("name"): c for c in config.get("input", []) or []}

    inputs = []
    for meta in metadata.get("inputs", []) or []:
        name, datatype = meta["name"], meta["datatype"]
        cfg = config_inputs.get(name, {})
        if cfg.get("optional"):
            continue
        if "dims" in cfg:
            dims = [int(d) for d in cfg["dims"]]
            shape = ([1] if max_batch_size > 0 else []) + dims
        else:
            shape = [int(d) for d in meta.get("shape", [])]
            if max_batch_size > 0 and shape:
                shape[0] = 1  # metadata includes the batch dimension as -1
        shape = [DYNAMIC_DIM if d < 0 else d for d in shape]
        data = _sample(datatype, shape, name)
        tensor = InferInput(name, shape, datatype)
        if protocol == "http":
            tensor.set_data_from_numpy(data, binary_data=True)
        else:
            tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    return inputs


# --------------------------------------------------------------------------------------------
# server calls


class _Clients:
    def __init__(self, endpoint: Endpoint, timeout_s: float):
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        self.timeout_s = timeout_s
        self.http = httpclient.InferenceServerClient(
            f"{endpoint.host}:{endpoint.http_port}", connection_timeout=timeout_s, network_timeout=timeout_s)
        self.grpc = grpcclient.InferenceServerClient(f"{endpoint.host}:{endpoint.grpc_port}",
                                                     channel_args=_GRPC_CHANNEL_ARGS)

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
            return list(self.http.get_model_repository_index())
        except Exception:
            answer = self.grpc.get_model_repository_index(as_json=True, client_timeout=self.timeout_s)
            return list(answer.get("models", []))

    def metadata_and_config(self, protocol: str, name: str, version: str) -> tuple[dict, dict]:
        if protocol == "http":
            return (self.http.get_model_metadata(name, version),
                    self.http.get_model_config(name, version))
        return grpc_answers_as_http(self.grpc.get_model_metadata(name, version, client_timeout=self.timeout_s),
                                    self.grpc.get_model_config(name, version, client_timeout=self.timeout_s).config)

    def infer(self, protocol: str, name: str, version: str, inputs: list, output_names: list[str]):
        if protocol == "http":
            from tritonclient.http import InferRequestedOutput

            outputs = [InferRequestedOutput(n, binary_data=True) for n in output_names]
            return self.http.infer(name, inputs, model_version=version, outputs=outputs or None)
        from tritonclient.grpc import InferRequestedOutput

        outputs = [InferRequestedOutput(n) for n in output_names]
        return self.grpc.infer(name, inputs, model_version=version, outputs=outputs or None,
                               client_timeout=self.timeout_s)


def _output_datatype(result: Any, protocol: str, name: str) -> str | None:
    out = result.get_output(name)
    if out is None:
        return None
    return out["datatype"] if protocol == "http" else out.datatype


def _smoke_model(clients: _Clients, entry: dict) -> ModelSmoke:
    name = str(entry.get("name", ""))
    version = str(entry.get("version", "") or "")
    smoke = ModelSmoke(name=name, version=version, state=str(entry.get("state", "") or ""),
                       reason=str(entry.get("reason", "") or ""))
    if smoke.state != "READY":
        return smoke
    errors: list[str] = []
    for protocol in PROTOCOLS:
        step = "reading metadata"
        try:
            metadata, config = clients.metadata_and_config(protocol, name, version)
            step = "building inputs"
            inputs = build_inputs(metadata, config, protocol)
            declared = {o["name"]: o["datatype"] for o in metadata.get("outputs", []) or []}
            step = "inference"
            start = time.perf_counter()
            result = clients.infer(protocol, name, version, inputs, list(declared))
            smoke.latency_ms[protocol] = round((time.perf_counter() - start) * 1000.0, 3)
            for out_name, datatype in declared.items():
                got = _output_datatype(result, protocol, out_name)
                if got is None or result.as_numpy(out_name) is None:
                    errors.append(f"inference over {protocol}: output '{out_name}' is missing from the response")
                elif got != datatype:
                    errors.append(f"inference over {protocol}: output '{out_name}' is {got}, "
                                  f"the model declares {datatype}")
        except SkipInference as exc:
            note = f"inference over {protocol} skipped: {exc}"
            if note not in smoke.notes:
                smoke.notes.append(note)
        except Exception as exc:
            what = "inference" if step == "inference" else step
            errors.append(f"{what} over {protocol} failed: {short_error(exc)}")
    smoke.error = "\n".join(errors)
    smoke.ok = not errors
    return smoke


def smoke_test(endpoint: Endpoint, timeout_s: float = 30.0) -> SmokeReport:
    """Smoke-test the Triton server at `endpoint`; never raises for server-side problems.

    `timeout_s` bounds every single call (connect and network); the number of calls is bounded by
    the number of models, so the whole test is bounded too.
    """
    report = SmokeReport(address=str(endpoint))
    try:
        clients = _Clients(endpoint, timeout_s)
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
                errors.append(f"{protocol} on port {port} does not answer: {short_error(exc)}")
        report.live = all(live.values())
        report.ready = all(ready.values())
        if not any(live.values()):
            return report
        try:
            index = clients.index()
        except Exception as exc:
            errors.append(f"cannot read the repository index: {short_error(exc)}")
            return report
        for entry in index[:10_000]:
            report.models.append(_smoke_model(clients, entry))
        return report
    finally:
        report.error = "\n".join(errors)
        clients.close()
