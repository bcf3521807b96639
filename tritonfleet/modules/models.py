"""Modules for the model repository: staged as a delta beside the live one, then switched to or reloaded."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from tritonfleet.engine.connection import RSYNC_ITEM
from tritonfleet.engine.spec import Arg, Outcome, module
from tritonfleet.modules.common import q, switch_link, would
from tritonfleet.triton import releases


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


@module(args={"src": Arg("path", required=True), "dest": Arg("path", required=True),
              "group": Arg("str", required=True)}, needs=("repository",))
def model_repository(ctx, args) -> Outcome:
    """Stage the validated repository beside the live one, sending only what differs from it.

    Each repository version gets its own folder (named by its digest) next to the live path; files that did
    not change are hard-linked from the live version, so only changed files cross the network. The live
    repository is not touched: `models_link` switches to the new one.
    """
    src = str(Path(args["src"]).resolve())
    models_path = args["dest"].rstrip("/")
    group = args["group"]
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
    return would(ctx, f"{what} models {digest[:12]} ({len(changes)} change(s): {shown})", data=data)


@module(args={"dest": Arg("path", required=True)}, needs=("repository",))
def models_link(ctx, args) -> Outcome:
    """Switch the live model repository path to the staged version (atomic symlink rename)."""
    models_path = args["dest"].rstrip("/")
    target = f"{releases.models_store(models_path)}/{ctx.repository.digest[:16]}"
    if ctx.facts.models_is_unmanaged:
        return Outcome(failed=True, msg=f"{models_path} is a folder tritonfleet did not make: move it away "
                                        "and run again; nothing was changed")
    if ctx.facts.live_models == target:
        return Outcome(msg=f"{models_path} -> {target}")
    if not ctx.check:
        switch_link(ctx, models_path, target)
        ctx.facts.live_models = target
    return would(ctx, f"switch {models_path} to models {ctx.repository.digest[:12]}")


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
    out = ctx.conn.read(f"cd {q(folder)} 2>/dev/null && sh -c {q(_MODEL_DIGESTS)}").stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def ensembles_using(repository, models: list[str]) -> list[str]:
    """The ensembles that run any of `models` as a step, directly or through another ensemble."""
    found: list[str] = []
    reached = set(models)
    for _ in range(len(repository.models)):  # one more level of nesting each round, at most one round per model
        more = [name for name, info in repository.models.items() if name not in reached and info.backend == "ensemble"
                and any(step.model_name in reached for step in info.config.ensemble_scheduling.step)]
        if not more:
            break
        found += more
        reached.update(more)
    return found


@module(args={"dest": Arg("path", required=True)}, needs=("repository",))
def models_reload(ctx, args) -> Outcome:
    """Explicit model control: switch to the staged repository and load only what changed, no restart.

    Removed models are unloaded, changed and new ones loaded through Triton's repository API; each must be
    READY and answer its smoke inference. If one fails, the previous repository comes back, that model is
    loaded again from it, and the step fails naming the model.
    """
    models_path = args["dest"].rstrip("/")
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
        return would(ctx, f"switch {models_path} to models {ctx.repository.digest[:12]}: {plan}")
    switch_link(ctx, models_path, target)
    ctx.facts.live_models = target
    if ctx.facts.server_mode != "explicit":
        return Outcome(changed=True, msg=f"switched {models_path}; no server in explicit mode runs yet: the "
                                         "(re)start that follows loads every model")
    failures = ctx.server.control(unload=removed, load=changed)
    if not failures:
        from tritonfleet.triton.smokespec import repository_specs

        checked = changed + ensembles_using(ctx.repository, changed)  # an ensemble's answers move with its steps
        failures = ctx.server.smoke(specs=repository_specs(ctx.repository)).failures_of(checked)
    if failures:
        switch_link(ctx, models_path, previous)
        ctx.facts.live_models = previous
        # A failed model that still loaded (it answers wrong) is unloaded first: Triton reloads a loaded model only
        # when its files look newer, and the previous version's are older.
        back = [m for m in failures if m in old]
        restored = ctx.server.control(unload=[m for m in changed if m not in old] + back, load=back)
        detail = "; ".join(f"model '{m}': {why}" for m, why in failures.items())
        note = "previous version restored" + (f" (restore failed: {restored})" if restored else "")
        return Outcome(failed=True, msg=f"{detail}; {note}")
    return Outcome(changed=True, msg=f"switched to models {ctx.repository.digest[:12]} without a restart: {plan}")
