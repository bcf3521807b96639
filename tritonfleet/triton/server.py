"""One client for a host's Triton server, from the control machine: every call tritonfleet makes to it.

`ServerClient` speaks the KServe v2
HTTP API there (health, server metadata, repository index, load and unload, statistics) with bounded timeouts
and no proxy, at an `Endpoint` (`tritonfleet.triton.endpoint`); the smoke test (tritonclient over HTTP and gRPC)
takes the same endpoint. Readiness waits,
smoke tests, status, the doctor and explicit-mode reloads all go through here, so the loopback case works in all.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from tritonfleet.triton import apikey
from tritonfleet.triton.endpoint import Endpoint, short_error

# Smoke and readiness traffic goes straight to the host, whatever http_proxy the environment sets.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerClient:
    """Calls to one server over its HTTP API; every call bounded by `timeout` seconds.

    `api_key` opens the APIs the host restricts (triton_restricted_apis): it goes with every call.
    """

    def __init__(self, endpoint: Endpoint, timeout: float = 5.0, api_key: str = ""):
        self.endpoint, self.timeout, self.api_key = endpoint, timeout, api_key

    def request(self, path: str, body: bytes | None = None, timeout: float | None = None) -> tuple[int, bytes]:
        """(HTTP status, body) of a GET, or a POST when body is given; raises OSError when nothing answers."""
        headers = apikey.http_headers(self.api_key)
        if body is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.endpoint.http_url + path, data=body,
                                     method="POST" if body is not None else "GET", headers=headers)
        try:
            with _NO_PROXY.open(req, timeout=timeout or self.timeout) as resp:
                return resp.status, resp.read(1 << 22)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(1 << 16) if exc.fp else b""

    def _json(self, path: str, body: bytes | None = None, timeout: float | None = None):
        status, data = self.request(path, body, timeout)
        return status, json.loads(data or b"null")

    def ready(self, timeout: float | None = None) -> bool:
        """Strict readiness (every model ready); raises OSError when the server does not listen."""
        return self.request("/v2/health/ready", timeout=timeout)[0] == 200

    def live(self, timeout: float | None = None) -> bool:
        return self.request("/v2/health/live", timeout=timeout)[0] == 200

    def version(self) -> str:
        """Triton's version from the server metadata ("" when the server does not answer)."""
        try:
            status, data = self._json("/v2")
        except (OSError, ValueError):
            return ""
        return str(data.get("version", "")) if status == 200 and isinstance(data, dict) else ""

    def index(self, timeout: float | None = None) -> list[dict] | None:
        """The repository index: every model with its version, state and reason; None when it cannot be read."""
        try:
            status, data = self._json("/v2/repository/index", body=b"{}", timeout=timeout)
        except (OSError, ValueError):
            return None
        return data if status == 200 and isinstance(data, list) else None

    def model_states(self) -> dict[str, str]:
        """model -> READY, or the state with its reason ("UNAVAILABLE: ..."); {} when the index cannot be read."""
        states = {}
        for m in self.index() or []:
            state = str(m.get("state") or "UNKNOWN")
            states[str(m.get("name"))] = state if state == "READY" or not m.get("reason") else f"{state}: {m['reason']}"
        return states

    def statistics(self, model: str = "") -> dict:
        path = "/v2/models/stats" if not model else f"/v2/models/{urllib.parse.quote(model, safe='')}/stats"
        status, data = self._json(path)
        return data if status == 200 and isinstance(data, dict) else {}

    def control(self, unload: list[str] = (), load: list[str] = (), timeout: float = 120.0) -> dict[str, str]:
        """Unload, then load models through the repository API (explicit model control).

        Returns {model: reason} for every call that failed. Triton answers a load only once the model is READY
        or has failed, so no polling is needed.
        """
        failures = {}
        for action, names in (("unload", unload), ("load", load)):
            for name in names:
                path = f"/v2/repository/models/{urllib.parse.quote(name, safe='')}/{action}"
                try:
                    status, body = self.request(path, body=b"{}", timeout=timeout)
                except OSError as exc:
                    failures[name] = f"{action} failed: {short_error(exc)}"
                    continue
                if status != 200:
                    try:
                        reason = json.loads(body or b"{}").get("error", "")
                    except ValueError:
                        reason = body.decode(errors="replace")
                    failures[name] = f"{action} failed: {reason or f'HTTP {status}'}"
        return failures

    def wait_ready(self, timeout_s: float = 120.0, interval_s: float = 0.5) -> tuple[bool, list[dict]]:
        """Poll readiness until the server is ready or `timeout_s` passes; (ready, repository index).

        Returns early, not ready, once every model has left loading (each one READY or UNAVAILABLE) while the
        server still says not ready: the index then carries the failed models' reasons, and waiting longer
        would not change them.
        """
        interval_s = max(0.05, float(interval_s))
        deadline = time.monotonic() + max(0.0, float(timeout_s))
        index: list[dict] = []
        for _ in range(int(timeout_s / interval_s) + 2):
            per_call = max(0.2, min(5.0, deadline - time.monotonic()))
            try:
                ready = self.ready(timeout=per_call)
            except OSError:
                pass  # not listening yet
            else:
                latest = self.index(timeout=per_call)
                if latest is not None:
                    index = latest
                if ready:
                    return True, index
                # Settled: nothing LOADING and some model failed (UNAVAILABLE, or no state at all: Triton lists
                # a model whose config it could not parse without ever trying to load it).
                states = {str(m.get("state", "")) for m in index}
                if index and states <= {"READY", "UNAVAILABLE", ""} and states & {"UNAVAILABLE", ""}:
                    return False, index
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(interval_s, remaining))
        return False, index

    def smoke(self, timeout_s: float = 30.0, specs=None):
        """Every model's real inference over HTTP and gRPC (tritonfleet.triton.smoke), answers compared with
        `specs` (model -> its smoke spec, tritonfleet.triton.smokespec) where a model has one."""
        from tritonfleet.triton.smoke import smoke_test  # tritonclient, grpc and numpy load only when asked
        return smoke_test(self.endpoint, timeout_s=timeout_s, specs=specs, api_key=self.api_key)
