"""Fleet status: what each host runs, how its server is, and where it drifts from the inventory or its group."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from tritonfleet.engine.executor import for_each_host
from tritonfleet.fleet.run import prepare
from tritonfleet.paths import REPO_ROOT
from tritonfleet.triton.facts import gather_facts
from tritonfleet.triton.endpoint import endpoint_for
from tritonfleet.triton.server import ServerClient


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
    gpus: list = field(default_factory=list)  # one line per GPU: index, name, memory, driver, compute capability, MIG
    drift: list = field(default_factory=list)


def host_status(host, conn, hostvars: dict) -> HostStatus:
    """One host's release and service from its facts, and its server's version and model states."""
    facts = gather_facts(conn, str(hostvars["triton_user"]), str(hostvars["triton_model_repository_path"]))
    status = HostStatus(host.name, reachable=True)
    live = facts.live
    status.release = live.id if live else ""
    status.models_digest = live.models_digest if live else ""
    status.service = facts.service.get("ActiveState", "")
    status.uptime_s = int(facts.service.get("UptimeSeconds") or 0)
    status.restarts = int(facts.service.get("NRestarts") or 0)
    status.gpus = [gpu.describe() for gpu in facts.gpus]
    if status.service == "active":
        server = ServerClient(endpoint_for(host.address, hostvars, conn), api_key=facts.api_key)
        status.triton_version, status.models = server.version(), server.model_states()
    return status


def fleet_status(hosts: list, extra_vars: dict | None = None, bundle_source: str | None = None,
                 progress=print, forks: int = 16) -> list[HostStatus]:
    prepared = prepare(REPO_ROOT / "playbooks" / "deploy.yml", hosts, extra_vars, bundle_source, progress=progress)
    results, _ = for_each_host(hosts, lambda h, conn: host_status(h, conn, prepared.vars[h.name]), forks=forks)
    rows = [r.value or HostStatus(r.host, error=r.unreachable or r.error) for r in results]
    releases = Counter(r.release for r in rows if r.reachable and r.release)
    majority = releases.most_common(1)[0][0] if releases else ""
    for row, host in zip(rows, hosts):
        if not row.reachable:
            continue
        desired = f"{prepared.bundle.bundle_id}+{prepared.repository_of(host.name).digest[:12]}"
        if row.release != desired:
            row.drift.append(f"release {row.release or 'none'} is not the inventory's {desired}")
        if len(releases) > 1 and row.release != majority:
            row.drift.append(f"differs from the rest of the group ({majority})")
        if row.service != "active":
            row.drift.append(f"service is {row.service or 'missing'}")
        if row.service == "active" and not row.triton_version:
            row.drift.append("the server does not answer")
        bad = [f"{name} {state}" for name, state in row.models.items() if state != "READY"]
        if bad:
            row.drift.append("models not ready: " + "; ".join(bad))
    return rows


def as_dicts(rows: list[HostStatus]) -> list[dict]:
    return [asdict(r) for r in rows]
