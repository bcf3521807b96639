"""What a sync would change on a host: models added, removed and changed, and the files of each.

Computed by rsync itself (a checksum dry run against the live repository), so it is exactly the work the
next `sync-models` does, and nothing on the host changes.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from tritonfleet.engine.connection import RSYNC_ITEM
from tritonfleet.engine.executor import for_each_host


@dataclass
class ModelDiff:
    host: str
    added: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    changed: dict = field(default_factory=dict)  # model -> [files]
    error: str = ""

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.error)


def parse_itemized(output: str, diff: ModelDiff) -> None:
    """Sort rsync's itemized changes into models added, removed and changed (with their files)."""
    for line in output.splitlines():
        m = RSYNC_ITEM.match(line)
        if not m or m.group(2) == "./" or m.group(1).startswith("."):
            continue  # "." = same content, only attributes (times) differ
        flag, path = m.group(1), m.group(2)
        model, _, rest = path.partition("/")
        if not rest:  # the model folder itself
            if flag == "*deleting":
                diff.removed.append(model)
            elif flag.startswith("cd+"):
                diff.added.append(model)
            continue
        if not path.endswith("/"):
            what = "deleted" if flag == "*deleting" else "new" if "+++" in flag else "changed"
            diff.changed.setdefault(model, []).append(f"{rest} ({what})")
    for model in diff.added + diff.removed:  # rsync lists a folder's files before the folder
        diff.changed.pop(model, None)


def diff_host(conn, name: str, hostvars: dict, source: str) -> ModelDiff:
    diff = ModelDiff(name)
    live = conn.run(f"readlink -f {shlex.quote(str(hostvars['triton_model_repository_path']))}",
                    check=False).stdout.strip()
    if not live or conn.run(f"test -d {shlex.quote(live)}", check=False).exited != 0:
        diff.added = sorted(p.name for p in Path(source).iterdir() if p.is_dir())
        return diff
    group = str(hostvars["triton_user"])
    proc = conn.rsync(source, live, ["-a", "--delete", "--dry-run", "--checksum", "--itemize-changes",
                                     "--exclude=__pycache__/", f"--chown=root:{group}", "--chmod=D0750,F0640"])
    if proc.returncode != 0:
        diff.error = proc.stderr.strip()[-500:]
    parse_itemized(proc.stdout, diff)
    return diff


def diff_hosts(hosts: list, all_vars: dict, *, forks: int = 10) -> list[ModelDiff]:
    """Every host's diff, in parallel; an unreachable host is a diff with its error (the run exits 1)."""
    results, _ = for_each_host(hosts, lambda h, conn: diff_host(conn, h.name, all_vars[h.name],
                                                                 str(all_vars[h.name]["model_repository"])),
                               forks=forks)
    return [r.value or ModelDiff(r.host, error=f"unreachable: {r.unreachable}" if r.unreachable else r.error)
            for r in results]
