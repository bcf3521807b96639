"""Fleet status: what each host runs, how its server is, and where it drifts from the inventory or its group."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from tritonfleet.engine.connection import HostConnection, Unreachable
from tritonfleet.errors import TritonfleetError
from tritonfleet.triton.facts import gather_facts
from tritonfleet.paths import REPO_ROOT
from tritonfleet.engine.runner import prepare

@dataclass
class HostStatus:
    name: str
    reachable: bool = False
    error: str = ""
    triton_version: str = ""
    release: str = ""
    models_digest: str = ""
    service: str = ""
    uptime_s: int = 0
    restarts: int = 0
    models: dict = field(default_factory=dict)  # name -> state (READY, UNAVAILABLE: reason, ...)
    drift: list = field(default_factory=list)


def _server(address: str, port: int) -> tuple[str, dict]:
    """Triton's version and every model's state, from the control machine (empty when it does not answer)."""
    from tritonfleet.triton.smoke import _host, _index, _request
    base = f"http://{_host(address)}:{port}"
    try:
        status, body = _request(base + "/v2", timeout=5)
        version = json.loads(body).get("version", "") if status == 200 else ""
    except (OSError, ValueError):
        return "", {}
    states = {}
    for m in _index(base, timeout=5) or []:
        state = m.get("state", "UNKNOWN")
        states[m["name"]] = state if state == "READY" or not m.get("reason") else f"{state}: {m['reason']}"
    return version, states


def host_status(host, hostvars: dict) -> HostStatus:
    status = HostStatus(host.name)
    try:
        conn = HostConnection(host)
        try:
            facts = gather_facts(conn, str(hostvars["triton_user"]), str(hostvars["triton_model_repository_path"]))
        finally:
            conn.close()
    except (Unreachable, TritonfleetError) as exc:
        status.error = str(exc)
        return status
    status.reachable = True
    live = facts.live
    status.release = live.id if live else ""
    status.models_digest = live.models_digest if live else ""
    status.service = facts.service.get("ActiveState", "")
    status.uptime_s = int(facts.service.get("UptimeSeconds") or 0)
    status.restarts = int(facts.service.get("NRestarts") or 0)
    if status.service == "active":
        status.triton_version, status.models = _server(host.address, int(hostvars["triton_http_port"]))
    return status


def fleet_status(hosts: list, extra_vars: dict | None = None, bundle_source: str | None = None,
                 progress=print) -> list[HostStatus]:
    _, all_vars, bundle, repositories = prepare(REPO_ROOT / "playbooks" / "deploy.yml", hosts, extra_vars,
                                                bundle_source, progress=progress)
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(hosts)))) as pool:
        rows = list(pool.map(lambda h: host_status(h, all_vars[h.name]), hosts))
    releases = Counter(r.release for r in rows if r.reachable and r.release)
    majority = releases.most_common(1)[0][0] if releases else ""
    for row, host in zip(rows, hosts):
        if not row.reachable:
            continue
        desired = f"{bundle.bundle_id}+{repositories[all_vars[host.name]['model_repository']].digest[:12]}"
        if row.release != desired:
            row.drift.append(f"release {row.release or 'none'} is not the inventory's {desired}")
        if len(releases) > 1 and row.release != majority:
            row.drift.append(f"differs from the rest of the group ({majority})")
        if row.service != "active":
            row.drift.append(f"service is {row.service or 'missing'}")
        bad = [f"{name} {state}" for name, state in row.models.items() if state != "READY"]
        if bad:
            row.drift.append("models not ready: " + "; ".join(bad))
    return rows


def as_dicts(rows: list[HostStatus]) -> list[dict]:
    return [asdict(r) for r in rows]
