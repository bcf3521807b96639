"""Modules for the host's system: the service user, packages, files from templates, systemd units."""

from __future__ import annotations

import difflib
import hashlib

from tritonfleet import secrets
from tritonfleet.engine.packages import install_command
from tritonfleet.engine.jinja import RenderError, render_text
from tritonfleet.engine.playbook import template_path
from tritonfleet.engine.spec import Arg, Outcome, module
from tritonfleet.modules.common import q, would
from tritonfleet.triton import apikey, layout


@module(args={"name": Arg("str", required=True)})
def system_user(ctx, args) -> Outcome:
    name = args["name"]
    if ctx.facts.user_exists:
        return Outcome(msg=f"user {name} exists")
    if not ctx.check:
        ctx.conn.run(f"useradd --system --user-group --home-dir /nonexistent --no-create-home "
                     f"--shell /usr/sbin/nologin {q(name)}")
        ctx.facts.user_exists = True
    return would(ctx, f"create system user {name}")


@module(args={"names": Arg("list", required=True, elements="str")})
def packages(ctx, args) -> Outcome:
    names = args["names"]
    missing = [n for n in names if n not in ctx.facts.packages]
    if not missing:
        return Outcome(msg=f"installed: {', '.join(names)}")
    if not ctx.check:
        command = install_command(ctx.facts.pkg_mgr, missing)
        if command is None:
            return Outcome(failed=True, msg=f"cannot install {', '.join(missing)}: no known package manager")
        ctx.conn.run(command, timeout=900)
        ctx.facts.packages.update(missing)
    return would(ctx, f"install {', '.join(missing)}")


@module(args={"src": Arg("path", required=True), "dest": Arg("path", required=True),
              "mode": Arg("str", default="0644"), "owner": Arg("str", default="root"),
              "group": Arg("str", default="root")})
def template(ctx, args) -> Outcome:
    src = template_path(args["src"])  # where the playbook's load check looked for it
    dest = args["dest"]
    try:
        wanted = render_text(src.read_text(), ctx.vars)
    except OSError as exc:
        return Outcome(failed=True, msg=f"template {src}: {exc.strerror}")
    except RenderError as exc:
        return Outcome(failed=True, msg=f"template {src}: {exc.reason}")
    unit_sha256 = hashlib.sha256(wanted.encode()).hexdigest() if dest == layout.UNIT_PATH else None
    if unit_sha256 and unit_sha256 == ctx.facts.unit_sha256:
        return Outcome(msg=f"{dest} up to date")  # the facts carry the unit's checksum: no need to read it
    current = ctx.conn.read(f"cat {q(dest)} 2>/dev/null").stdout
    if current == wanted:
        return Outcome(msg=f"{dest} up to date")
    diff = "".join(difflib.unified_diff(current.splitlines(True), wanted.splitlines(True),
                                        fromfile=f"{dest} (on host)", tofile=f"{dest} (wanted)"))
    if not ctx.check:
        ctx.conn.put_text(wanted, dest, mode=args["mode"], owner=args["owner"], group=args["group"])
        if unit_sha256:
            ctx.facts.unit_sha256, ctx.facts.service_stale = unit_sha256, True
    return would(ctx, f"write {dest}", diff=diff)


@module(args={"name": Arg("str", required=True), "state": Arg("str", choices=("started", "stopped", "restarted")),
              "enabled": Arg("bool"), "daemon_reload": Arg("bool", default=False)})
def systemd(ctx, args) -> Outcome:
    name, state, enabled = args["name"], args["state"], args["enabled"]
    if name == layout.SERVICE and not ctx.facts.service_stale:
        props = ctx.facts.service  # gathered with the facts, and nothing in this run has changed it since
    else:
        show = ctx.conn.read(f"systemctl show {q(name)} -p ActiveState -p UnitFileState -p NeedDaemonReload "
                             "-p LoadState").stdout
        props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    actions = []
    if props.get("NeedDaemonReload") == "yes" or (args["daemon_reload"] and props.get("LoadState") != "loaded"):
        actions.append(("reload units", "systemctl daemon-reload"))
    if enabled is True and props.get("UnitFileState") != "enabled":
        actions.append((f"enable {name}", f"systemctl enable {q(name)}"))
    elif enabled is False and props.get("UnitFileState") == "enabled":
        actions.append((f"disable {name}", f"systemctl disable {q(name)}"))
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
    return would(ctx, ", ".join(what for what, _ in actions))


@module(args={"rotate": Arg("bool", default=False)})
def triton_api_key(ctx, args) -> Outcome:
    """The key for Triton's restricted APIs in a root-only file on the host: the var `triton_api_key` when given,
    else the key already there, else (or with `rotate`) a new random one. It never touches this machine's disk;
    the run's later server calls send the new key (the server takes it at its next restart: notify it)."""
    given, current = ctx.vars.get("triton_api_key") or "", ctx.facts.api_key
    if given and args["rotate"]:
        return Outcome(failed=True, msg="the key comes from the var triton_api_key: to rotate it, change the var "
                                        "and run `invoke start`")
    if current and (current == given or not (given or args["rotate"])):
        return Outcome(msg=f"{apikey.KEY_FILE} in place")
    key = given or apikey.new_key()
    secrets.register([key])
    if not ctx.check:
        # on stdin, not in the command: a command line is visible to every user of both machines while it runs
        tmp = f"{apikey.KEY_FILE}.tritonfleet-tmp"
        ctx.conn.run(f"install -d -m 0755 -o root -g root {q(apikey.KEY_DIR)} && (umask 077 && cat > {q(tmp)}) && "
                     f"chown root:root {q(tmp)} && mv -f {q(tmp)} {q(apikey.KEY_FILE)}",
                     stdin=apikey.env_file_text(key))
        ctx.facts.api_key = key
        ctx.forget_server()
    what = "a new key" if not current else "the key from triton_api_key" if given else "a rotated key"
    return would(ctx, f"write {what} to {apikey.KEY_FILE} (root only)")
