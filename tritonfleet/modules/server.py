"""Modules that talk to the running server from the control machine: the readiness wait and the smoke test.

Neither supports check mode: a server that check mode did not (re)start says nothing about the planned state.
"""

from __future__ import annotations

from tritonfleet.engine.spec import Arg, Outcome, module
from tritonfleet.modules.common import q
from tritonfleet.triton import layout, releases, smokespec


def _journal_tail(ctx, lines: int = 25) -> str:
    return ctx.conn.read(f"journalctl -u {q(layout.SERVICE)} -n {lines} --no-pager -o cat 2>&1",
                         timeout=30).stdout.strip()


def _diagnosis(ctx) -> tuple[str, dict]:
    """What is wrong on the host, with the fix (the doctor loads only when a step fails)."""
    from tritonfleet.triton.doctor import diagnosis_for_outcome
    return diagnosis_for_outcome(ctx)


@module(args={"timeout": Arg("float")}, supports_check_mode=False)
def wait_ready(ctx, args) -> Outcome:
    """Bounded poll of the server's readiness from the control machine; on failure, say which model and why.

    Without `timeout`, the host's `triton_ready_timeout`.
    """
    timeout = args["timeout"] if args["timeout"] is not None else float(ctx.vars["triton_ready_timeout"])
    ready, index = ctx.server.wait_ready(timeout_s=timeout)
    if ready:
        return Outcome(msg=f"server ready with {len(index)} model(s)")
    failed = [f"model '{m.get('name')}' is {m.get('state', 'UNKNOWN')}: {m.get('reason') or 'no reason given'}"
              for m in index if m.get("state") != "READY"]
    detail = "\n".join(failed) or "server did not become ready"
    diagnosis, extra = _diagnosis(ctx)
    return Outcome(failed=True, msg=detail + diagnosis, data={"journal": _journal_tail(ctx), "index": index, **extra})


def _specs(ctx) -> dict:
    """The smoke specs of the repository the host serves (model -> spec).

    Those of the validated repository on this machine when it is the live one (a deploy, a reload: no extra
    round trip); otherwise, as after a rollback or for `invoke smoke`, those on the host, read in one command.
    """
    models_path = str(ctx.vars["triton_model_repository_path"]).rstrip("/")
    repository = ctx.repository
    live = f"{releases.models_store(models_path)}/{repository.digest[:16]}" if repository is not None else None
    if ctx.facts.live_models == live:
        return smokespec.repository_specs(repository)
    return smokespec.remote_specs(ctx.conn.read(smokespec.remote_specs_command(models_path), timeout=30).stdout)


def _known_causes(lines: list[str], diagnosed: dict) -> str:
    """Cause and fix of the failure lines the signature table knows and the doctor did not already name."""
    from tritonfleet.triton import signatures

    named = {f.get("signature") for f in (diagnosed.get("diagnosis") or {}).get("findings", [])}
    return "".join(f"\nknown cause: {sig.cause}\n    fix: {sig.fix}\n    see: {sig.link}"
                   for sig, _ in signatures.match_lines(lines) if sig.id not in named)


def _data(report) -> dict:
    """Per model: ok when every served version is, and each version's result."""
    models: dict = {}
    for m in report.models:
        entry = models.setdefault(m.name, {"ok": True, "versions": {}})
        entry["ok"] = entry["ok"] and m.ok
        entry["versions"][m.version] = {"ok": m.ok, "state": m.state, "reason": m.reason, "error": m.error,
                                        "latency_ms": m.latency_ms, "notes": m.notes, "checked": m.checked}
    return {"smoke": models}


def _summary(m) -> str:
    """One model version in the ok message: latency per protocol ('-' where not applicable), whether checked."""
    name = m.name if m.version in ("", "1") else f"{m.name} v{m.version}"
    latency = "/".join(f"{m.latency_ms[p]:.1f}" if p in m.latency_ms else "-" for p in ("http", "grpc"))
    return f"{name} {latency} ms" + (" checked" if m.checked else "")


@module(args={"timeout": Arg("float", default=30.0)}, supports_check_mode=False)
def smoke(ctx, args) -> Outcome:
    """One real inference per model version and protocol (a gRPC stream for a decoupled model), answers compared
    with the model's smoke spec where it has one; on failure, what the doctor and the known signatures say.

    A second smoke step in one run (sync-models' handler, then smoke.yml, in a deploy) with no step changing the host
    in between asks nothing again: the answers are the same server's, moments old."""
    if ctx.answered is not None and ctx.answered[0] == ctx.changes:
        return Outcome(msg="every model answered this run's smoke test, and nothing changed since",
                       data=ctx.answered[1])
    try:
        specs = _specs(ctx)
    except smokespec.SpecError as exc:
        return Outcome(failed=True, msg=f"smoke spec {exc}")
    report = ctx.server.smoke(timeout_s=args["timeout"], specs=specs)
    data = _data(report)
    if not report.ok:
        failures = report.failures()
        diagnosis, extra = _diagnosis(ctx)
        return Outcome(failed=True, msg="\n".join(failures) + _known_causes(failures, extra) + diagnosis,
                       data={**data, **extra})
    checked = sum(m.checked for m in report.models)
    ctx.answered = (ctx.changes, data)
    return Outcome(msg=f"{len(report.models)} model version(s) answered, {checked} checked against their smoke "
                       f"spec (http/grpc): {', '.join(map(_summary, report.models))}", data=data, show=True)
