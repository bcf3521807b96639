"""Invoke tasks: declare each task's options and hand them, as given, to `tritonfleet/cli.py`, which parses
and checks them in one place (`tritonfleet/options.py`). Run `invoke --list` to see them.

An option not given is None here: its default is in tritonfleet/options.py (`Options`), or, for --inventory,
--forks and --bundle, in the `tritonfleet:` section of Invoke's configuration (CONFIG_DEFAULTS there), so a
project can set it once in an invoke.yaml here.
"""

from invoke import Collection, task

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


def _playbook_task(name: str, playbook: str, doc: str):
    @task(name=name, help=HELP)
    def run(c, host=None, group=None, models=None, check=False, json=False, inventory=None, bundle=None,
            forks=None, verbose=False):
        cli.run_playbook_command(c.config, playbook, host=host, group=group, models=models, check=check, json=json,
                                 inventory=inventory, bundle=bundle, forks=forks, verbose=verbose)

    run.__doc__ = doc
    return run


deploy = _playbook_task("deploy", "deploy.yml", "Provision, sync models, start and smoke-test Triton on hosts.")
provision = _playbook_task("provision", "provision.yml", "Install Triton and its Python backend in /opt/tritonserver.")
sync_models = _playbook_task("sync-models", "sync-models.yml", "Validate the model repository and sync it to hosts.")
start = _playbook_task("start", "start.yml", "Install the systemd unit, start tritonserver, wait for every model.")
smoke = _playbook_task("smoke", "smoke.yml", "Smoke-test every model remotely over HTTP and gRPC.")


@task(help={**{k: v for k, v in HELP.items() if k != "check"}, "canary": "hosts deployed first, alone (default 1)",
            "batch": "hosts per batch after the canary: N, or P% of all the hosts rounded down (default 25%; "
                     "0: all the rest at once), as Ansible's serial",
            "max_fail": "failed or unreachable hosts tolerated before the rollout stops: N, or P% of all the hosts "
                        "rounded down (default 0)"})
def rollout(c, group=None, host=None, canary=None, batch=None, max_fail=None, forks=None, models=None, json=False,
            inventory=None, bundle=None, verbose=False):
    """Deploy to a group in batches, canary first; roll failed hosts back to their previous release."""
    cli.rollout_command(c.config, group=group, host=host, canary=canary, batch=batch, max_fail=max_fail, forks=forks,
                        models=models, json=json, inventory=inventory, bundle=bundle, verbose=verbose)


rollback = _playbook_task("rollback", "rollback.yml", "Switch hosts back to their previous release and smoke-test it.")


@task(name="status", help={k: HELP[k] for k in ("host", "group", "models", "json", "inventory", "bundle")})
def fleet_status(c, group=None, host=None, models=None, json=False, inventory=None, bundle=None):
    """Per host: release, Triton version, service state and uptime, model states; marks drift."""
    cli.status_command(c.config, group=group, host=host, models=models, json=json, inventory=inventory,
                       bundle=bundle)


@task(help={"host": HELP["host"], "group": HELP["group"], "fix": "apply the safe fixes, restart, check again",
            "json": HELP["json"], "inventory": HELP["inventory"]})
def doctor(c, host=None, group=None, fix=False, json=False, inventory=None):
    """Diagnose Triton's Python backend on hosts: every finding with its evidence and fix."""
    cli.doctor_command(c.config, host=host, group=group, fix=fix, json=json, inventory=inventory)


@task(name="diff", help={k: HELP[k] for k in ("host", "group", "models", "json", "inventory")})
def models_diff(c, host=None, group=None, models=None, json=False, inventory=None):
    """Show what sync-models would change on hosts: models added, removed, changed, and their files."""
    cli.models_diff_command(c.config, host=host, group=group, models=models, json=json, inventory=inventory)


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


ns = Collection(deploy, provision, sync_models, start, smoke, rollout, rollback, fleet_status, bundle, doctor)
ns.add_collection(Collection("lab", lab_up, lab_down, lab_status))
ns.add_collection(Collection("models", models_diff))
ns.configure({"tritonfleet": options.CONFIG_DEFAULTS})
