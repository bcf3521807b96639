"""Modules that talk to the running server from the control machine: the readiness wait and the smoke test.

Neither supports check mode: a server that check mode did not (re)start says nothing about the planned state.
"""

from __future__ import annotations

from tritonfleet.engine.spec import Arg, Outcome, module
from tritonfleet.modules.common import q
from tritonfleet.triton import layout


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


@module(args={"timeout": Arg("float", default=30.0)}, supports_check_mode=False)
def smoke(ctx, args) -> Outcome:
    report = ctx.server.smoke(timeout_s=args["timeout"])
    data = {"smoke": {m.name: {"ok": m.ok, "state": m.state, "latency_ms": m.latency_ms, "error": m.error,
                               "reason": m.reason} for m in report.models}}
    if not report.ok:
        diagnosis, extra = _diagnosis(ctx)
        return Outcome(failed=True, msg="\n".join(report.failures()) + diagnosis, data={**data, **extra})
    lat = ", ".join(f"{m.name} {m.latency_ms.get('http', 0):.1f}/{m.latency_ms.get('grpc', 0):.1f} ms"
                    for m in report.models)
    return Outcome(msg=f"{len(report.models)} model(s) answered (http/grpc): {lat}", data=data, show=True)
