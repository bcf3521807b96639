"""The gRPC TLS files on the host: the server's certificate, key and CA from the control machine
(`tritonfleet/triton/tls.py`), root-owned, group of the service user, 0640, in a 0750 folder."""

from __future__ import annotations

import hashlib

from tritonfleet import secrets
from tritonfleet.engine.spec import Outcome, module
from tritonfleet.modules.common import q, would
from tritonfleet.triton import tls

# One line per file present: "<name> <sha256> <owner>:<group>:<mode>", and the folder's "<dir> - owner:group:mode".
_READ = ("d={dir}; [ -d \"$d\" ] && echo \"$d - $(stat -c '%U:%G:%a' \"$d\")\"; "
         "for f in {names}; do p=\"$d/$f\"; [ -f \"$p\" ] || continue; "
         "echo \"$f $(sha256sum < \"$p\" | cut -d' ' -f1) $(stat -c '%U:%G:%a' \"$p\")\"; done; true")


def _on_host(ctx) -> tuple[str, dict]:
    """(the folder's owner:group:mode or "", {file name: (sha256, owner:group:mode)}) as the host has them."""
    names = " ".join(tls.HOST_FILES.values())
    out = ctx.conn.read(_READ.format(dir=q(tls.HOST_DIR), names=names)).stdout
    folder, files = "", {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        if parts[1] == "-":
            folder = parts[2]
        else:
            files[parts[0]] = (parts[1], parts[2])
    return folder, files


@module(args={})
def grpc_tls(ctx, args) -> Outcome:
    """Push the gRPC TLS files the vars name (checked before any host was touched) where the unit's flags point,
    only those whose content, owner or mode differ; contents travel on stdin and appear in no output or diff
    (a diff shows checksums). Notify the server's restart: Triton reads them only at start."""
    wanted = tls.pushed_files(ctx.vars)
    if not wanted:
        return Outcome(msg="gRPC is plaintext (triton_grpc_tls_cert unset)")
    group = str(ctx.vars["triton_user"])
    owner = f"root:{group}:{int(tls.FILE_MODE, 8):o}"
    dir_owner = f"root:{group}:{int(tls.DIR_MODE, 8):o}"
    folder, present = _on_host(ctx)
    actions, diff = [], []
    if folder != dir_owner:
        actions.append((f"create {tls.HOST_DIR}" if not folder else f"set {tls.HOST_DIR} to {dir_owner}",
                        f"install -d -m {tls.DIR_MODE} -o root -g {q(group)} {q(tls.HOST_DIR)}", None))
    for dest, local in wanted:
        name = dest.rsplit("/", 1)[1]
        try:
            data = local.read_bytes()
        except OSError as exc:
            return Outcome(failed=True, msg=f"cannot read {local}: {exc.strerror}")
        if name == tls.HOST_FILES["triton_grpc_tls_key"]:
            text = data.decode(errors="replace")
            secrets.register([text, *(line for line in text.splitlines() if len(line) >= 16 and "-----" not in line)])
        sha = hashlib.sha256(data).hexdigest()
        have_sha, have_owner = present.get(name, ("", ""))
        if have_sha != sha:
            tmp = f"{dest}.tritonfleet-tmp"
            # streamed on stdin over OpenSSH, never in a command line (visible to every user while it runs);
            # created 0600, given its group and mode, then renamed into place
            actions.append((f"write {dest}", f"(umask 077 && cat > {q(tmp)}) && chown root:{q(group)} {q(tmp)} && "
                                             f"chmod {tls.FILE_MODE} {q(tmp)} && mv -f {q(tmp)} {q(dest)}", local))
            diff.append(f"--- {dest} (on host)\n+++ {dest} (wanted)\n"
                        + (f"-sha256 {have_sha} {have_owner}\n" if have_sha else "")
                        + f"+sha256 {sha} {owner} (content not shown)\n")
        elif have_owner != owner:
            actions.append((f"set {dest} to {owner}",
                            f"chown root:{q(group)} {q(dest)} && chmod {tls.FILE_MODE} {q(dest)}", None))
            diff.append(f"--- {dest} (on host)\n+++ {dest} (wanted)\n-{have_owner}\n+{owner}\n")
    if not actions:
        return Outcome(msg=f"{len(wanted)} gRPC TLS file(s) in place in {tls.HOST_DIR}")
    if not ctx.check:
        for _, command, local in actions:
            if local is None:
                ctx.conn.run(command)
            else:
                ctx.conn.stream_file(local, command, timeout=120)
    return would(ctx, ", ".join(what for what, _, _ in actions), diff="".join(diff))
