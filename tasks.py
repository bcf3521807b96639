"""Invoke tasks: declare each task's options and hand them, as given, to `tritonfleet/cli.py`, which parses
and checks them in one place (`tritonfleet/options.py`). Run `invoke --list` to see them.

An option not given is None here (a repeatable one, an empty list): its default is in tritonfleet/options.py
(`Options`), or, for --inventory, --forks and --bundle, in the `tritonfleet:` section of Invoke's configuration
(CONFIG_DEFAULTS there) and then ansible.cfg, so a project can set it once in an invoke.yaml here.

Every task that works on hosts of the inventory also takes Ansible's options, with Ansible's short flags where
Ansible has one: `-l/--limit`, `--list-hosts`, `-e/--extra-vars` (repeatable), `--vault-id` (repeatable),
`--vault-password-file` (repeatable), `-J/--ask-vault-pass`; the playbook tasks `-t/--tags`, `--skip-tags`
(repeatable) and `-D/--diff` too (rollout `-D/--diff`).
"""

from invoke import Collection, Task, task

from tritonfleet import cli, options

HELP = {
    "host": "host name(s) from the inventory, comma-separated",
    "group": "inventory group (default: all)",
    "models": "model repository on this machine (overrides the inventory var model_repository)",
    "check": "show what would change, change nothing",
    "json": "print a machine-readable report on stdout",
    "inventory": "inventory file (default: tritonfleet.inventory in Invoke's configuration, inventory/hosts.yml)",
    "bundle": "Triton bundle: a directory or tarball of /opt/tritonserver, or a built .tar.gz "
              "(default: tritonfleet.bundle in Invoke's configuration, else the pinned wheel)",
    "forks": "hosts worked on at once (default: tritonfleet.forks in Invoke's configuration, 10)",
    "verbose": "show every step's message, not only changes and failures",
}
ANSIBLE_HELP = {
    "limit": "narrow the hosts further with an Ansible host pattern: gpu0*, rack_a:!gpu02, rack_a:&fast, ~regex, "
             "group[0:3], a,b, @FILE",
    "list_hosts": "print the hosts the task would work on and exit, touching nothing",
    "extra_vars": "vars above all others, as ansible-playbook -e: key=value, JSON or YAML, or @FILE (repeatable)",
    "vault_id": "vault password as LABEL@FILE, LABEL@prompt or FILE (repeatable)",
    "vault_password_file": "file holding the vault password, or a script printing it (repeatable)",
    "ask_vault_pass": "ask for the vault password on the terminal",
}
PLAYBOOK_HELP = {
    "tags": "run only the steps with these tags (comma-separated, repeatable; always/never/tagged/untagged/all "
            "as Ansible)",
    "skip_tags": "skip the steps with these tags (comma-separated, repeatable)",
    "diff": "show the diff of each file a step changes (or, with --check, would change)",
}
REPEATABLE = ["inventory", "extra_vars", "vault_id", "vault_password_file", "tags", "skip_tags"]
ANSIBLE_SHORT_FLAGS = {"limit": "l", "extra_vars": "e", "tags": "t", "diff": "D", "ask_vault_pass": "J",
                       "list_hosts": None, "skip_tags": None, "vault_id": None, "vault_password_file": None}


class AnsibleTask(Task):
    """Invoke's Task with Ansible's short flags for Ansible's options (`-l`, `-e`, `-t`, `-D`, `-J`) and none for
    those Ansible gives none. Invoke would derive them from the first free letter, different in each task
    (`--list-hosts` got `--` once every letter before its dash was taken)."""

    def arg_opts(self, name, default, taken_names):
        opts = super().arg_opts(name, default, taken_names)
        if name in ANSIBLE_SHORT_FLAGS:
            short = ANSIBLE_SHORT_FLAGS[name]
            opts["names"] = opts["names"][:1] + ([short] if short else [])
        return opts


def host_task(*, help: dict, **kwargs):
    """@task for a task that works on hosts of the inventory: Ansible's options and their help added."""
    return task(klass=AnsibleTask, iterable=REPEATABLE, help={**help, **ANSIBLE_HELP}, **kwargs)


def _playbook_task(name: str, playbook: str, doc: str):
    @host_task(name=name, help={**HELP, **PLAYBOOK_HELP})
    def run(c, host=None, group=None, models=None, check=False, json=False, inventory=None, bundle=None,
            forks=None, verbose=False, limit=None, list_hosts=False, extra_vars=None, tags=None, skip_tags=None,
            diff=False, vault_id=None, vault_password_file=None, ask_vault_pass=False):
        cli.run_playbook_command(c.config, playbook, host=host, group=group, models=models, check=check, json=json,
                                 inventory=inventory, bundle=bundle, forks=forks, verbose=verbose, limit=limit,
                                 list_hosts=list_hosts, extra_vars=extra_vars, tags=tags, skip_tags=skip_tags,
                                 diff=diff, vault_id=vault_id, vault_password_file=vault_password_file,
                                 ask_vault_pass=ask_vault_pass)

    run.__doc__ = doc
    return run


deploy = _playbook_task("deploy", "deploy.yml", "Provision, sync models, start and smoke-test Triton on hosts.")
provision = _playbook_task("provision", "provision.yml", "Install Triton and its Python backend in /opt/tritonserver.")
sync_models = _playbook_task("sync-models", "sync-models.yml", "Validate the model repository and sync it to hosts.")
start = _playbook_task("start", "start.yml", "Install the systemd unit, start tritonserver, wait for every model.")
smoke = _playbook_task("smoke", "smoke.yml", "Smoke-test every model remotely over HTTP and gRPC.")


@host_task(help={**{k: v for k, v in HELP.items() if k != "check"}, "diff": PLAYBOOK_HELP["diff"],
                 "canary": "hosts deployed first, alone (default 1)",
                 "batch": "hosts per batch after the canary: N, or P% of all the hosts rounded down (default 25%; "
                          "0: all the rest at once), as Ansible's serial",
                 "max_fail": "failed or unreachable hosts tolerated before the rollout stops: N, or P% of all the "
                             "hosts rounded down (default 0)"})
def rollout(c, group=None, host=None, canary=None, batch=None, max_fail=None, forks=None, models=None, json=False,
            inventory=None, bundle=None, verbose=False, limit=None, list_hosts=False, extra_vars=None, diff=False,
            vault_id=None, vault_password_file=None, ask_vault_pass=False):
    """Deploy to a group in batches, canary first; roll failed hosts back to their previous release."""
    cli.rollout_command(c.config, group=group, host=host, canary=canary, batch=batch, max_fail=max_fail, forks=forks,
                        models=models, json=json, inventory=inventory, bundle=bundle, verbose=verbose, limit=limit,
                        list_hosts=list_hosts, extra_vars=extra_vars, diff=diff, vault_id=vault_id,
                        vault_password_file=vault_password_file, ask_vault_pass=ask_vault_pass)


rotate_api_key = _playbook_task("rotate-api-key", "rotate-api-key.yml",
                                "Give hosts a new key for Triton's restricted APIs and restart tritonserver.")
rollback = _playbook_task("rollback", "rollback.yml", "Switch hosts back to their previous release and smoke-test it.")


@host_task(name="status", help={k: HELP[k] for k in ("host", "group", "models", "json", "inventory", "bundle")})
def fleet_status(c, group=None, host=None, models=None, json=False, inventory=None, bundle=None, limit=None,
                 list_hosts=False, extra_vars=None, vault_id=None, vault_password_file=None, ask_vault_pass=False):
    """Per host: release, Triton version, service state and uptime, model states; marks drift."""
    cli.status_command(c.config, group=group, host=host, models=models, json=json, inventory=inventory,
                       bundle=bundle, limit=limit, list_hosts=list_hosts, extra_vars=extra_vars, vault_id=vault_id,
                       vault_password_file=vault_password_file, ask_vault_pass=ask_vault_pass)


@host_task(help={"host": HELP["host"], "group": HELP["group"], "fix": "apply the safe fixes, restart, check again",
                 "json": HELP["json"], "inventory": HELP["inventory"]})
def doctor(c, host=None, group=None, fix=False, json=False, inventory=None, limit=None, list_hosts=False,
           extra_vars=None, vault_id=None, vault_password_file=None, ask_vault_pass=False):
    """Diagnose Triton's Python backend on hosts: every finding with its evidence and fix."""
    cli.doctor_command(c.config, host=host, group=group, fix=fix, json=json, inventory=inventory, limit=limit,
                       list_hosts=list_hosts, extra_vars=extra_vars, vault_id=vault_id,
                       vault_password_file=vault_password_file, ask_vault_pass=ask_vault_pass)


@host_task(name="diff", help={k: HELP[k] for k in ("host", "group", "models", "json", "inventory")})
def models_diff(c, host=None, group=None, models=None, json=False, inventory=None, limit=None, list_hosts=False,
                extra_vars=None, vault_id=None, vault_password_file=None, ask_vault_pass=False):
    """Show what sync-models would change on hosts: models added, removed, changed, and their files."""
    cli.models_diff_command(c.config, host=host, group=group, models=models, json=json, inventory=inventory,
                            limit=limit, list_hosts=list_hosts, extra_vars=extra_vars, vault_id=vault_id,
                            vault_password_file=vault_password_file, ask_vault_pass=ask_vault_pass)


@task(name="inventory", klass=AnsibleTask, iterable=["inventory", "vault_id", "vault_password_file"],
      help={"list": "print every group and host as `ansible-inventory --list` does",
            "host": "print one host's vars as `ansible-inventory --host NAME` does",
            "inventory": HELP["inventory"], **{k: ANSIBLE_HELP[k] for k in ("vault_id", "vault_password_file",
                                                                            "ask_vault_pass")}})
def inventory_show(c, list=False, host=None, inventory=None, vault_id=None, vault_password_file=None,
                   ask_vault_pass=False):
    """Show the resolved inventory, as ansible-inventory does (vars as the inventory sets them)."""
    cli.inventory_command(c.config, list_all=list, host=host, inventory=inventory, vault_id=vault_id,
                          vault_password_file=vault_password_file, ask_vault_pass=ask_vault_pass)


@task(help={"source": HELP["bundle"]})
def bundle(c, source=None):
    """Build (or reuse) the versioned, checksummed Triton bundle pushed to hosts."""
    cli.bundle_command(c.config, source=source)


@task(name="up", help={"hosts": "how many hosts of group lab to bring up (gpu01..)", "inventory": HELP["inventory"]})
def lab_up(c, hosts=None, inventory=None):
    """Bring up lab hosts: real systemd hosts in network namespaces, reached over SSH."""
    cli.lab_up_command(c.config, hosts=hosts, inventory=inventory)


@task(name="down")
def lab_down(c):
    """Remove every lab host and everything the lab made (the cached base image stays)."""
    cli.lab_down_command(c.config)


@task(name="status")
def lab_status(c):
    """Show each lab host and its state."""
    cli.lab_status_command(c.config)


ns = Collection(deploy, provision, sync_models, start, smoke, rollout, rollback, rotate_api_key, fleet_status, bundle,
                doctor, inventory_show)
ns.add_collection(Collection("lab", lab_up, lab_down, lab_status))
ns.add_collection(Collection("models", models_diff))
ns.configure({"tritonfleet": options.CONFIG_DEFAULTS})
