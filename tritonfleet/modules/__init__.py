"""Modules: each reads facts, compares them with the desired state and runs only what is needed.

Every module returns an Outcome (ok / changed / failed / skipped, a message, a diff for files) and honours
check mode: in check mode it says what it would change and changes nothing.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import shlex
import time
from pathlib import Path, PurePosixPath

from tritonfleet.triton import releases
from tritonfleet.triton import layout
from tritonfleet.engine.connection import RSYNC_ITEM
from tritonfleet.engine.packages import install_command
from tritonfleet.engine.spec import Module, Outcome
from tritonfleet.errors import TritonfleetError
from tritonfleet.paths import REPO_ROOT

q = shlex.quote


def _would(ctx, msg: str, **kw) -> Outcome:
    return Outcome(changed=True, msg=("would " if ctx.check else "") + msg, **kw)


def triton_preflight(ctx, args) -> Outcome:
    problems = layout.preflight_problems(ctx.facts, ctx.bundle, ctx.repository)
    if problems:
        return Outcome(failed=True, msg="; ".join(problems))
    return Outcome(msg=f"{ctx.facts.os_name}, python {ctx.facts.python_version}, {len(ctx.facts.gpus)} GPU(s)")


def system_user(ctx, args) -> Outcome:
    name = str(args["name"])
    if ctx.facts.user_exists:
        return Outcome(msg=f"user {name} exists")
    if not ctx.check:
        ctx.conn.run(f"useradd --system --user-group --home-dir /nonexistent --no-create-home "
                     f"--shell /usr/sbin/nologin {q(name)}")
        ctx.facts.user_exists = True
    return _would(ctx, f"create system user {name}")


def packages(ctx, args) -> Outcome:
    names = [str(n) for n in args["names"]]
    missing = [n for n in names if n not in ctx.facts.packages]
    if not missing:
        return Outcome(msg=f"installed: {', '.join(names)}")
    if not ctx.check:
        command = install_command(ctx.facts.pkg_mgr, missing)
        if command is None:
            return Outcome(failed=True, msg=f"cannot install {', '.join(missing)}: no known package manager")
        ctx.conn.run(command, timeout=900)
        ctx.facts.packages.update(missing)
    return _would(ctx, f"install {', '.join(missing)}")


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
        return _would(ctx, f"push release {bundle.bundle_id} ({bundle.size // 2**20} MiB)")
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


def python_stub(ctx, args) -> Outcome:
    """The stub for the host's Python, in the release's backends/python, OWNED by the service user.

    The Python backend chmods the stub at every model load; if the service user does not own it every
    model fails with 'Failed to give execute permission to triton_python_backend_stub'.
    """
    user = str(args["owner"])
    release = layout.release_dir(ctx.bundle.bundle_id)
    source = f"{release}/{ctx.bundle.stub_path(ctx.facts.python_version)}"
    dest = f"{release}/{layout.STUB_IN_RELEASE}"
    if ctx.bundle.bundle_id not in ctx.facts.releases:
        state = []
    elif ctx.facts.live_release == release:
        state = ctx.facts.live_stub.split()
    else:
        state = ctx.conn.run(f"stat -c '%U %a' {q(dest)} 2>/dev/null && cmp -s {q(source)} {q(dest)} && echo same",
                             check=False).stdout.split()
    if state == [user, "755", "same"]:
        return Outcome(msg=f"stub for python {ctx.facts.python_version} owned by {user}")
    if not ctx.check:
        ctx.conn.run(f"install -o {q(user)} -g {q(user)} -m 0755 {q(source)} {q(dest)}")
        if ctx.facts.live_release == release:
            ctx.facts.live_stub = f"{user} 755 same"
    return _would(ctx, f"install the python {ctx.facts.python_version} stub owned by {user}")


def _switch_link(ctx, link: str, target: str) -> None:
    """Point `link` at `target` atomically: a new symlink renamed over the old one."""
    tmp = f"{link}.tritonfleet-tmp"
    ctx.conn.run(f"ln -sfn {q(target)} {q(tmp)} && mv -Tf {q(tmp)} {q(link)}")


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
        _switch_link(ctx, layout.TRITON_ROOT, target)
        ctx.facts.live_release = target
    return _would(ctx, f"switch {layout.TRITON_ROOT} from {previous} to {target}")


def local_manifest(root: str) -> str:
    """rsync's quick check in one digest: every file's path, size and modification time (whole seconds)."""
    lines = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            lines.append(f"{os.path.relpath(full, root)}\t{st.st_size}\t{int(st.st_mtime)}")
    return hashlib.sha256("".join(f"{ln}\n" for ln in sorted(lines)).encode()).hexdigest()


def model_repository(ctx, args) -> Outcome:
    """Stage the validated repository beside the live one, sending only what differs from it.

    Each repository version gets its own folder (named by its digest) next to the live path; files that did
    not change are hard-linked from the live version, so only changed files cross the network. The live
    repository is not touched: `models_link` switches to the new one.
    """
    src = str(Path(args["src"]).resolve())
    models_path = str(args["dest"]).rstrip("/")
    group = str(args["group"])
    if not models_path.startswith("/") or "\n" in models_path:
        return Outcome(failed=True, msg=f"dest must be an absolute path, got {models_path!r}")
    store = releases.models_store(models_path)
    digest = ctx.repository.digest[:16]
    staged = digest in ctx.facts.model_repos
    final = f"{store}/{digest}"
    dest = final if staged else f"{store}/.incoming-{digest}"
    # Bytecode caches are the control machine's, not the model's: the server compiles its own.
    options = ["-a", "--delete", "--itemize-changes", "--stats", "--exclude=__pycache__/",
               f"--chown=root:{group}", "--chmod=D0750,F0640"]
    if ctx.facts.live_models and not staged:
        options.append(f"--link-dest={ctx.facts.live_models}")
    if ctx.check:
        options.append("--dry-run")
    else:
        ctx.conn.run(f"install -d -m 0755 {q(str(Path(store).parent))} && "
                     f"install -d -o root -g {q(group)} -m 0750 {q(store)}" +
                     ("" if staged else f" && rm -rf {q(dest)}"))
    # The live repository as the facts saw it (layout.MANIFEST_COMMAND) against this one: no rsync needed.
    if staged and ctx.facts.live_models == final and ctx.facts.live_models_manifest == local_manifest(src):
        return Outcome(msg=f"models {digest[:12]} live and unchanged")
    proc = ctx.conn.rsync(src, dest, options)
    if proc.returncode != 0:
        if not staged and not ctx.check:
            ctx.conn.run(f"rm -rf {q(dest)}", check=False)
        return Outcome(failed=True, msg=f"rsync to {dest} failed (exit {proc.returncode}): "
                                        f"{proc.stderr.strip()[-1000:]}")
    changes = [m.group(2) for m in map(RSYNC_ITEM.match, proc.stdout.splitlines())
               if m and not (m.group(1).startswith(".") and m.group(2) == "./")]
    sent = re.search(r"Total bytes sent: ([\d,]+)", proc.stdout)
    data = {"bytes_sent": int(sent.group(1).replace(",", "")) if sent else 0, "files": changes}
    if staged and not changes:
        return Outcome(msg=f"models {digest[:12]} staged", data=data)
    if not staged and not ctx.check:
        ctx.conn.run(f"mv -T {q(dest)} {q(final)}")
        ctx.facts.model_repos.append(digest)
    shown = ", ".join(changes[:8]) + (f" and {len(changes) - 8} more" if len(changes) > 8 else "")
    what = "repair" if staged else "stage"
    return _would(ctx, f"{what} models {digest[:12]} ({len(changes)} change(s): {shown})", data=data)


def models_link(ctx, args) -> Outcome:
    """Switch the live model repository path to the staged version (atomic symlink rename)."""
    models_path = str(args["dest"]).rstrip("/")
    target = f"{releases.models_store(models_path)}/{ctx.repository.digest[:16]}"
    if ctx.facts.models_is_unmanaged:
        return Outcome(failed=True, msg=f"{models_path} is a folder tritonfleet did not make: move it away "
                                        "and run again; nothing was changed")
    if ctx.facts.live_models == target:
        return Outcome(msg=f"{models_path} -> {target}")
    if not ctx.check:
        _switch_link(ctx, models_path, target)
        ctx.facts.live_models = target
    return _would(ctx, f"switch {models_path} to models {ctx.repository.digest[:12]}")


_MODEL_DIGESTS = r"""
for m in */; do
  m=${m%/}; printf '%s ' "$m"; find "$m" -type f ! -path '*/__pycache__/*' -print0 | sort -z \
    | xargs -0 -r sha256sum | sha256sum | cut -d' ' -f1
done
"""


def _model_digests(ctx, folder: str) -> dict[str, str]:
    """Per-model content digests of a repository on the host, to tell which models a switch changes."""
    if not folder:
        return {}
    out = ctx.conn.run(f"cd {q(folder)} 2>/dev/null && sh -c {q(_MODEL_DIGESTS)}", check=False).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def models_reload(ctx, args) -> Outcome:
    """Explicit model control: switch to the staged repository and load only what changed, no restart.

    Removed models are unloaded, changed and new ones loaded through Triton's repository API; each must be
    READY and answer its smoke inference. If one fails, the previous repository comes back, that model is
    loaded again from it, and the step fails naming the model.
    """
    models_path = str(args["dest"]).rstrip("/")
    target = f"{releases.models_store(models_path)}/{ctx.repository.digest[:16]}"
    if ctx.facts.models_is_unmanaged:
        return Outcome(failed=True, msg=f"{models_path} is a folder tritonfleet did not make: move it away")
    previous = ctx.facts.live_models
    if previous == target:
        return Outcome(msg=f"{models_path} -> {target}")
    old, new = _model_digests(ctx, previous), _model_digests(ctx, target)
    changed = sorted(m for m in new if old.get(m) != new[m])
    removed = sorted(set(old) - set(new))
    plan = ", ".join([f"load {m}" for m in changed] + [f"unload {m}" for m in removed]) or "no model changed"
    if ctx.check:
        return _would(ctx, f"switch {models_path} to models {ctx.repository.digest[:12]}: {plan}")
    _switch_link(ctx, models_path, target)
    ctx.facts.live_models = target
    if ctx.facts.server_mode != "explicit":
        return Outcome(changed=True, msg=f"switched {models_path}; no server in explicit mode runs yet: the "
                                         "(re)start that follows loads every model")
    failures = ctx.server.control(unload=removed, load=changed)
    if not failures:
        report = ctx.server.smoke()
        failures = {m.name: m.error or m.reason for m in report.models if not m.ok and m.name in changed}
    if failures:
        _switch_link(ctx, models_path, previous)
        ctx.facts.live_models = previous
        restored = ctx.server.control(unload=[m for m in changed if m not in old], load=[m for m in failures if m in old])
        detail = "; ".join(f"model '{m}': {why}" for m, why in failures.items())
        note = "previous version restored" + (f" (restore failed: {restored})" if restored else "")
        return Outcome(failed=True, msg=f"{detail}; {note}")
    return Outcome(changed=True, msg=f"switched to models {ctx.repository.digest[:12]} without a restart: {plan}")


def _write_history(ctx, history: list) -> None:
    ctx.conn.run(f"install -d -m 0755 {q(releases.STATE_DIR)}")
    ctx.conn.put_text(releases.render_history(history), releases.HISTORY_FILE)
    ctx.facts.history = history


def release_record(ctx, args) -> Outcome:
    """Record the live release on the host's stack and remove what the `keep` newest no longer use."""
    if not ctx.facts.live_release:
        return Outcome(skipped=True, msg="no Triton release is live yet")
    release = releases.Release(PurePosixPath(ctx.facts.live_release).name, ctx.repository.digest[:16],
                               time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    live = ctx.facts.live
    if live and live.id == release.id:
        return Outcome(msg=f"release {release.id} is live")
    history = releases.kept(releases.pushed(ctx.facts.history, release), int(args.get("keep", 3)))
    bundles = {r.bundle_id for r in history}
    digests = {r.models_digest for r in history}
    stale = [layout.release_dir(b) for b in ctx.facts.releases if b not in bundles]
    store = releases.models_store(str(args["dest"]).rstrip("/"))
    stale += [f"{store}/{d}" for d in ctx.facts.model_repos if d not in digests]
    if not ctx.check:
        _write_history(ctx, history)
        if stale:
            ctx.conn.run("rm -rf " + " ".join(q(p) for p in stale))
        ctx.facts.releases = [b for b in ctx.facts.releases if b in bundles]
        ctx.facts.model_repos = [d for d in ctx.facts.model_repos if d in digests]
    pruned = f"; remove {len(stale)} old tree(s)/repositories" if stale else ""
    return _would(ctx, f"record release {release.id} (was {live.id if live else 'none'}){pruned}",
                  data={"release_before": live.id if live else "", "release_after": release.id})


def release_rollback(ctx, args) -> Outcome:
    """Switch back to an earlier release on the host's stack (both symlinks), forgetting the ones after it.

    Without `to`, the one before the live release; with `to` (a release id), that one, which is how a
    rollout puts back the release a host had before a failed deploy, whatever step it failed at.
    """
    history = ctx.facts.history
    wanted = str(args.get("to") or "")
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
    models_path = str(args["dest"]).rstrip("/")
    tree = layout.release_dir(target.bundle_id)
    models = f"{releases.models_store(models_path)}/{target.models_digest}"
    current = ctx.facts.live.id if ctx.facts.live else "none"
    if (ctx.facts.live_release, ctx.facts.live_models, ctx.facts.history) == (tree, models, history):
        return Outcome(msg=f"release {target.id} is live")
    if not ctx.check:
        _switch_link(ctx, layout.TRITON_ROOT, tree)
        _switch_link(ctx, models_path, models)
        _write_history(ctx, history)
        ctx.facts.live_release, ctx.facts.live_models = tree, models
    return _would(ctx, f"roll back from {current} to {target.id}",
                  data={"release_before": current, "release_after": target.id})


def template(ctx, args) -> Outcome:
    src = Path(args["src"])
    src = src if src.is_absolute() else REPO_ROOT / "templates" / src
    dest = str(args["dest"])
    from tritonfleet.engine.playbook import compiled_template
    try:
        wanted = compiled_template(src.read_text()).render(ctx.vars)
    except OSError as exc:
        return Outcome(failed=True, msg=f"template {src}: {exc.strerror}")
    unit_sha256 = hashlib.sha256(wanted.encode()).hexdigest() if dest == layout.UNIT_PATH else None
    if unit_sha256 and unit_sha256 == ctx.facts.unit_sha256:
        return Outcome(msg=f"{dest} up to date")  # the facts carry the unit's checksum: no need to read it
    current = ctx.conn.run(f"cat {q(dest)} 2>/dev/null", check=False).stdout
    if current == wanted:
        return Outcome(msg=f"{dest} up to date")
    diff = "".join(difflib.unified_diff(current.splitlines(True), wanted.splitlines(True),
                                        fromfile=f"{dest} (on host)", tofile=f"{dest} (wanted)"))
    if not ctx.check:
        ctx.conn.put_text(wanted, dest, mode=str(args.get("mode", "0644")), owner=str(args.get("owner", "root")),
                          group=str(args.get("group", "root")))
        if unit_sha256:
            ctx.facts.unit_sha256, ctx.facts.service_stale = unit_sha256, True
    return _would(ctx, f"write {dest}", diff=diff)


def systemd(ctx, args) -> Outcome:
    name = str(args["name"])
    state = args.get("state")
    if name == layout.SERVICE and not ctx.facts.service_stale:
        props = ctx.facts.service  # gathered with the facts, and nothing in this run has changed it since
    else:
        show = ctx.conn.run(f"systemctl show {q(name)} -p ActiveState -p UnitFileState -p NeedDaemonReload "
                            "-p LoadState", check=False).stdout
        props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    actions = []
    if props.get("NeedDaemonReload") == "yes" or (args.get("daemon_reload") and props.get("LoadState") != "loaded"):
        actions.append(("reload units", "systemctl daemon-reload"))
    if args.get("enabled") is True and props.get("UnitFileState") != "enabled":
        actions.append((f"enable {name}", f"systemctl enable {q(name)}"))
    if state == "started" and props.get("ActiveState") != "active":
        actions.append((f"start {name}", f"systemctl start {q(name)}"))
    elif state == "restarted":
        actions.append((f"restart {name}", f"systemctl restart {q(name)}"))
    elif state == "stopped" and props.get("ActiveState") in ("active", "activating", "reloading"):
        actions.append((f"stop {name}", f"systemctl stop {q(name)}"))
    if not actions:
        return Outcome(msg=f"{name} {props.get('ActiveState', 'unknown')}, {props.get('UnitFileState', 'unknown')}")
    if not ctx.check:
        ctx.conn.run(" && ".join(cmd for _, cmd in actions), timeout=120)
        ctx.facts.service_stale = True
    return _would(ctx, ", ".join(what for what, _ in actions))


def _journal_tail(ctx, lines: int = 25) -> str:
    return ctx.conn.run(f"journalctl -u {q(layout.SERVICE)} -n {lines} --no-pager -o cat 2>&1", check=False,
                        timeout=30).stdout.strip()


def wait_ready(ctx, args) -> Outcome:
    """Bounded poll of the server's readiness from the control machine; on failure, say which model and why."""
    if ctx.check:
        return Outcome(skipped=True, msg="check mode: the server is not polled")
    ready, index = ctx.server.wait_ready(timeout_s=float(args.get("timeout", ctx.vars["triton_ready_timeout"])))
    if ready:
        return Outcome(msg=f"server ready with {len(index)} model(s)")
    failed = [f"model '{m.get('name')}' is {m.get('state', 'UNKNOWN')}: {m.get('reason') or 'no reason given'}"
              for m in index if m.get("state") != "READY"]
    detail = "\n".join(failed) or "server did not become ready"
    from tritonfleet.triton.doctor import diagnosis_for_outcome
    diagnosis, extra = diagnosis_for_outcome(ctx)  # what is wrong on the host, with the fix
    return Outcome(failed=True, msg=detail + diagnosis, data={"journal": _journal_tail(ctx), "index": index, **extra})


def smoke(ctx, args) -> Outcome:
    if ctx.check:
        return Outcome(skipped=True, msg="check mode: no inference sent")
    report = ctx.server.smoke(timeout_s=float(args.get("timeout", 30)))
    data = {"smoke": {m.name: {"ok": m.ok, "state": m.state, "latency_ms": m.latency_ms, "error": m.error,
                               "reason": m.reason} for m in report.models}}
    if not report.ok:
        from tritonfleet.triton.doctor import diagnosis_for_outcome
        diagnosis, extra = diagnosis_for_outcome(ctx)  # what is wrong on the host, with the fix
        return Outcome(failed=True, msg="\n".join(report.failures()) + diagnosis, data={**data, **extra})
    lat = ", ".join(f"{m.name} {m.latency_ms.get('http', 0):.1f}/{m.latency_ms.get('grpc', 0):.1f} ms"
                    for m in report.models)
    return Outcome(msg=f"{len(report.models)} model(s) answered (http/grpc): {lat}", data=data, show=True)


MODULES: dict[str, Module] = {
    "triton_preflight": Module(triton_preflight, needs=("bundle", "repository")),
    "system_user": Module(system_user, required=("name",)),
    "packages": Module(packages, required=("names",)),
    "triton_release": Module(triton_release, needs=("bundle",)),
    "python_stub": Module(python_stub, required=("owner",), needs=("bundle",)),
    "triton_link": Module(triton_link, needs=("bundle",)),
    "model_repository": Module(model_repository, required=("src", "dest", "group"), needs=("repository",)),
    "models_link": Module(models_link, required=("dest",), needs=("repository",)),
    "models_reload": Module(models_reload, required=("dest",), needs=("repository",)),
    "release_record": Module(release_record, required=("dest",), optional=("keep",), needs=("repository",)),
    "release_rollback": Module(release_rollback, required=("dest",), optional=("to",)),
    "template": Module(template, required=("src", "dest"), optional=("mode", "owner", "group")),
    "systemd": Module(systemd, required=("name",), optional=("state", "enabled", "daemon_reload")),
    "wait_ready": Module(wait_ready, optional=("timeout",)),
    "smoke": Module(smoke, optional=("timeout",)),
}
