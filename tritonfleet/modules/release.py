"""Modules for Triton releases: the preflight, the release tree and its stub, the live link, the release stack."""

from __future__ import annotations

import time
from pathlib import PurePosixPath

from tritonfleet.engine.spec import Arg, Outcome, module
from tritonfleet.errors import TritonfleetError
from tritonfleet.modules.common import q, switch_link, would
from tritonfleet.triton import layout, releases


@module(needs=("bundle", "repository"))
def triton_preflight(ctx, args) -> Outcome:
    """Refuse a host that cannot run the bundle or the models, saying what it has, what is needed and what to do."""
    problems = layout.platform_problems(ctx.facts, ctx.bundle)
    problems += layout.preflight_problems(ctx.facts, ctx.bundle, ctx.repository, ctx.vars["triton_server_args"])
    if "triton_packages" not in ctx.host.vars and ctx.facts.python_version:
        try:  # the packages step needs a package manager tritonfleet knows, unless the user manages them
            layout.python_packages(ctx.facts.pkg_mgr, ctx.facts.python_version)
        except TritonfleetError as exc:
            problems.append(f"{exc.message} (fix: {exc.hint})")
    if problems:
        return Outcome(failed=True, msg="; ".join(problems))
    note = layout.driver_note(ctx.facts.gpus)
    return Outcome(msg=f"{ctx.facts.os_name}, python {ctx.facts.python_version}, {len(ctx.facts.gpus)} GPU(s)"
                       + (f"; {note}" if note else ""))


@module(needs=("bundle",))
def triton_release(ctx, args) -> Outcome:
    """Push the bundle as a release folder, unpacked beside the live one and marked complete last."""
    bundle = ctx.bundle
    if bundle.bundle_id in ctx.facts.releases:
        return Outcome(msg=f"release {bundle.bundle_id} present")
    needed_kb = bundle.size * 4 // 1024
    if ctx.facts.disk_free_kb and ctx.facts.disk_free_kb < needed_kb:
        return Outcome(failed=True, msg=f"not enough space in /opt: {ctx.facts.disk_free_kb // 1024} MiB free, "
                                        f"release needs about {needed_kb // 1024} MiB")
    if ctx.check:
        return would(ctx, f"push release {bundle.bundle_id} ({bundle.size // 2**20} MiB)")
    final = layout.release_dir(bundle.bundle_id)
    incoming = f"{layout.RELEASES_DIR}/.incoming-{bundle.bundle_id}"
    ctx.progress(f"pushing {bundle.bundle_id} ({bundle.size // 2**20} MiB)")
    script = (f"set -e; umask 022; rm -rf {q(incoming)} {q(final)}; mkdir -p {q(incoming)}; "
              f"tar -xzf - -C {q(incoming)} --no-same-owner; chmod -R go-w {q(incoming)}; "
              f"echo {q(bundle.sha256)} > {q(incoming + '/' + layout.RELEASE_MARKER)}; "
              f"mv -T {q(incoming)} {q(final)}")
    try:
        ctx.conn.stream_file(bundle.path, script)
    except TritonfleetError:
        ctx.conn.run(f"rm -rf {q(incoming)}", check=False)
        raise
    ctx.facts.releases.append(bundle.bundle_id)
    return Outcome(changed=True, msg=f"pushed release {bundle.bundle_id}", data={"bytes_sent": bundle.size})


@module(args={"owner": Arg("str", required=True)}, needs=("bundle",))
def python_stub(ctx, args) -> Outcome:
    """The stub for the host's Python, in the release's backends/python, OWNED by the service user.

    The Python backend chmods the stub at every model load; if the service user does not own it every
    model fails with 'Failed to give execute permission to triton_python_backend_stub'. A stub that lacks a
    library (the host's libpython) makes the server hang while loading, so once installed it is checked with `ldd`
    under the unit's LD_LIBRARY_PATH.
    """
    user = args["owner"]
    release = layout.release_dir(ctx.bundle.bundle_id)
    source = f"{release}/{ctx.bundle.stub_path(ctx.facts.python_version)}"
    dest = f"{release}/{layout.STUB_IN_RELEASE}"
    if ctx.bundle.bundle_id not in ctx.facts.releases:
        state = []
    elif ctx.facts.live_release == release:
        state = ctx.facts.live_stub.split()
    else:
        state = ctx.conn.read(f"stat -c '%U %a' {q(dest)} 2>/dev/null && cmp -s {q(source)} {q(dest)} "
                              "&& echo same").stdout.split()
    if state == [user, "755", "same"]:
        return Outcome(msg=f"stub for python {ctx.facts.python_version} owned by {user}")
    if not ctx.check:
        ldd = ctx.conn.run(f"install -o {q(user)} -g {q(user)} -m 0755 {q(source)} {q(dest)} && "
                           f"LD_LIBRARY_PATH={q(release + '/lib')} ldd {q(dest)}").stdout
        if ctx.facts.live_release == release:
            ctx.facts.live_stub = f"{user} 755 same"
        missing = [line.split()[0] for line in ldd.splitlines() if line.rstrip().endswith("=> not found")]
        if missing:
            return Outcome(changed=True, failed=True,
                           msg=f"installed the python {ctx.facts.python_version} stub, but it cannot start on this "
                               f"host: ldd finds no {', '.join(missing)} (with LD_LIBRARY_PATH={release}/lib, as the "
                               "unit runs it): install the host's package for it (the packages step does, unless "
                               "triton_packages is set) and run again")
    return would(ctx, f"install the python {ctx.facts.python_version} stub owned by {user}")


@module(needs=("bundle",))
def triton_link(ctx, args) -> Outcome:
    """Switch /opt/tritonserver to the release atomically (rename of a symlink); the old release stays."""
    target = layout.release_dir(ctx.bundle.bundle_id)
    if ctx.facts.root_is_unmanaged:
        return Outcome(failed=True, msg=f"{layout.TRITON_ROOT} is a folder tritonfleet did not make: move it "
                                        "away (e.g. to /opt/tritonserver.orig) and run again; nothing was changed")
    if ctx.facts.live_release == target:
        return Outcome(msg=f"{layout.TRITON_ROOT} -> {target}")
    previous = ctx.facts.live_release or "(none)"
    if not ctx.check:
        switch_link(ctx, layout.TRITON_ROOT, target)
        ctx.facts.live_release = target
    return would(ctx, f"switch {layout.TRITON_ROOT} from {previous} to {target}")


def _write_history(ctx, history: list) -> None:
    ctx.conn.run(f"install -d -m 0755 {q(releases.STATE_DIR)}")
    ctx.conn.put_text(releases.render_history(history), releases.HISTORY_FILE)
    ctx.facts.history = history


@module(args={"dest": Arg("path", required=True), "keep": Arg("int", default=3)}, needs=("repository",))
def release_record(ctx, args) -> Outcome:
    """Record the live release on the host's stack and remove what the `keep` newest no longer use."""
    if not ctx.facts.live_release:
        return Outcome(skipped=True, msg="no Triton release is live yet")
    release = releases.Release(PurePosixPath(ctx.facts.live_release).name, ctx.repository.digest[:16],
                               time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    live = ctx.facts.live
    if live and live.id == release.id:
        return Outcome(msg=f"release {release.id} is live")
    history = releases.kept(releases.pushed(ctx.facts.history, release), args["keep"])
    bundles = {r.bundle_id for r in history}
    digests = {r.models_digest for r in history}
    stale = [layout.release_dir(b) for b in ctx.facts.releases if b not in bundles]
    store = releases.models_store(args["dest"].rstrip("/"))
    stale += [f"{store}/{d}" for d in ctx.facts.model_repos if d not in digests]
    if not ctx.check:
        _write_history(ctx, history)
        if stale:
            ctx.conn.run("rm -rf " + " ".join(q(p) for p in stale))
        ctx.facts.releases = [b for b in ctx.facts.releases if b in bundles]
        ctx.facts.model_repos = [d for d in ctx.facts.model_repos if d in digests]
    pruned = f"; remove {len(stale)} old tree(s)/repositories" if stale else ""
    return would(ctx, f"record release {release.id} (was {live.id if live else 'none'}){pruned}",
                 data={"release_before": live.id if live else "", "release_after": release.id})


@module(args={"dest": Arg("path", required=True), "to": Arg("str", default="")})
def release_rollback(ctx, args) -> Outcome:
    """Switch back to an earlier release on the host's stack (both symlinks), forgetting the ones after it.

    Without `to`, the one before the live release; with `to` (a release id), that one, which is how a
    rollout puts back the release a host had before a failed deploy, whatever step it failed at.
    """
    history = ctx.facts.history
    wanted = args["to"]
    if wanted:
        ids = [r.id for r in history]
        if wanted not in ids:
            return Outcome(failed=True, msg=f"release {wanted} is not recorded on this host")
        history = history[:ids.index(wanted) + 1]
        target = history[-1]
    else:
        try:
            target, history = releases.popped(history)
        except ValueError:
            return Outcome(failed=True, msg="no previous release recorded on this host to roll back to")
    if target.bundle_id not in ctx.facts.releases or target.models_digest not in ctx.facts.model_repos:
        return Outcome(failed=True, msg=f"release {target.id} is no longer complete on the host")
    models_path = args["dest"].rstrip("/")
    tree = layout.release_dir(target.bundle_id)
    models = f"{releases.models_store(models_path)}/{target.models_digest}"
    current = ctx.facts.live.id if ctx.facts.live else "none"
    if (ctx.facts.live_release, ctx.facts.live_models, ctx.facts.history) == (tree, models, history):
        return Outcome(msg=f"release {target.id} is live")
    if not ctx.check:
        switch_link(ctx, layout.TRITON_ROOT, tree)
        switch_link(ctx, models_path, models)
        _write_history(ctx, history)
        ctx.facts.live_release, ctx.facts.live_models = tree, models
    return would(ctx, f"roll back from {current} to {target.id}",
                 data={"release_before": current, "release_after": target.id})
