"""The collection tritonfleet.triton on four real lab hosts (gpu03..gpu06), run by the real ansible-playbook and by
ansible-runner as AWX runs it: `serial: 2` batches, idempotence, a broken model rolled back and stopping the play,
check/diff mode, and the host lock shared with `invoke`."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import tritonclient.http as httpclient
import yaml

from conftest import LAB_HOSTS, admin_headers
from labkit import ADDRESSES, on_host, write_inventory
from test_collection_unit import install_collection, recap
from tritonfleet.engine import hostlock
from tritonfleet.paths import REPO_ROOT

pytestmark = pytest.mark.lab

FLEET = [h.name for h in LAB_HOSTS[2:6]]  # gpu03..gpu06, the rollout test's hosts
EXAMPLES = REPO_ROOT / "examples" / "models"
PLAY = [{"name": "Triton on the fleet, two hosts at a time", "hosts": "fleet", "gather_facts": False, "serial": 2,
         "max_fail_percentage": 0,
         "tasks": [{"name": "Triton deployed", "tritonfleet.triton.deploy": {"models": "{{ models }}"}}]}]


@pytest.fixture(scope="module")
def site(lab, tmp_path_factory):
    """The built collection installed into a collections path of its own, an Ansible inventory of fresh gpu03..gpu06
    (the lab's key and known_hosts; Ansible's default ssh connection), and the rollout play."""
    pytest.importorskip("ansible_runner")
    lab.ensure(6)
    with ThreadPoolExecutor(max_workers=len(FLEET)) as pool:
        list(pool.map(lab.reset, FLEET))
    where = tmp_path_factory.mktemp("collection")
    env = {**install_collection(where), "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
           "ANSIBLE_CALLBACK_FORMAT_PRETTY": "false"}
    inventory = write_inventory(where / "hosts.yml", {name: {} for name in FLEET}, group="fleet")
    (where / "deploy.yml").write_text(yaml.safe_dump(PLAY, sort_keys=False))
    return {"env": env, "where": where, "inventory": inventory, "playbook": where / "deploy.yml"}


def ansible_playbook(site, models, *args, timeout=900) -> subprocess.CompletedProcess:
    started = time.monotonic()
    proc = subprocess.run(["ansible-playbook", "-v", "-i", site["inventory"], str(site["playbook"]),
                           "-e", json.dumps({"models": str(models)}), *args], cwd=site["where"], env=site["env"],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    print(f"ansible-playbook {' '.join(args)}: exit {proc.returncode} in {time.monotonic() - started:.1f} s")
    return proc


def results(stdout: str) -> dict[str, dict]:
    """Each host's task result, from `changed: [gpu03] => {...}` lines (-v, one JSON object per line)."""
    found = {}
    for line in stdout.splitlines():
        for status in ("ok", "changed", "fatal"):
            if line.startswith(f"{status}: [") and "=>" in line:
                found[line.split("[", 1)[1].split("]", 1)[0]] = json.loads(line.split("=>", 1)[1])
    return found


def live(name: str) -> str:
    """The host's release stack's top line and where its model repository points."""
    return on_host(name, "tail -n 1 /var/lib/tritonfleet/releases; readlink /srv/tritonfleet/models")


def repo_with(tmp_path, name: str, marker: str):
    repo = tmp_path / name
    shutil.copytree(EXAMPLES, repo)
    with open(repo / "add_sub" / "1" / "model.py", "a") as fh:
        fh.write(f"\n# release marker: {marker}\n")
    return repo


def show(proc) -> str:
    return f"exit {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def deployed(site):
    first = ansible_playbook(site, EXAMPLES)
    second = ansible_playbook(site, EXAMPLES)
    return first, second


def test_deploys_four_hosts_two_at_a_time_and_changes_nothing_the_second_time(deployed):
    first, second = deployed
    assert first.returncode == 0, show(first)
    assert {h: c["changed"] for h, c in recap(first.stdout).items()} == dict.fromkeys(FLEET, 1)
    out = first.stdout
    assert out.count("TASK [Triton deployed]") == 2  # one per batch of serial: 2
    second_batch = out.rindex("TASK [Triton deployed]")
    assert all(out.index(f"changed: [{h}]") < second_batch for h in FLEET[:2])
    assert all(out.index(f"changed: [{h}]") > second_batch for h in FLEET[2:])
    steps = results(out)["gpu03"]["steps"]
    assert {s["module"] for s in steps} >= {"triton_release", "model_repository", "wait_ready", "smoke"}
    assert len({tuple(live(h).split()[:2]) for h in FLEET}) == 1  # one release (bundle, models digest) everywhere
    assert second.returncode == 0, show(second)
    assert {h: (c["ok"], c["changed"]) for h, c in recap(second.stdout).items()} == dict.fromkeys(FLEET, (1, 0))


def test_check_and_diff_show_the_unit_change_and_change_nothing(deployed, site):
    before = live("gpu03")
    proc = ansible_playbook(site, EXAMPLES, "--check", "--diff", "--limit", "gpu03", "-e", "triton_log_verbose=1")
    assert proc.returncode == 0, show(proc)
    assert recap(proc.stdout)["gpu03"]["changed"] == 1
    assert "--log-verbose=1" in proc.stdout  # the unit's diff, printed by Ansible's --diff
    assert live("gpu03") == before and "--log-verbose=1" not in on_host("gpu03", "systemctl cat tritonserver")


def test_broken_model_stops_the_first_batch_and_its_hosts_are_rolled_back(deployed, site, tmp_path):
    before = {h: live(h) for h in FLEET}
    repo = repo_with(tmp_path, "broken", "broken")
    model_py = repo / "str_upper" / "1" / "model.py"
    model_py.write_text('raise RuntimeError("broken on purpose: raises at import")\n' + model_py.read_text())
    proc = ansible_playbook(site, repo)
    assert proc.returncode == 2, show(proc)
    assert {h: c["failed"] for h, c in recap(proc.stdout).items()} == {"gpu03": 1, "gpu04": 1}  # batch 2 never ran
    for name in ("gpu03", "gpu04"):
        result = results(proc.stdout)[name]
        assert result["rolled_back"] is True and result["release_after"] == result["release_before"], result
        assert "str_upper" in result["msg"] and "broken on purpose" in result["msg"], result["msg"]
        assert [s["module"] for s in result["rollback_steps"]][-1] == "smoke"
    assert {h: live(h) for h in FLEET} == before
    for name in ("gpu03", "gpu04"):  # back on the old models, and serving
        client = httpclient.InferenceServerClient(f"{ADDRESSES[name]}:8000", connection_timeout=10)
        assert client.is_server_ready()
        states = {m["name"]: m.get("state") for m in client.get_model_repository_index(headers=admin_headers(ADDRESSES[name]))}
        assert states and set(states.values()) == {"READY"}, states


def test_ansible_runner_run_passes_and_its_job_events_hold_each_steps_result(deployed, site, tmp_path):
    import ansible_runner
    private = tmp_path / "runner"
    for folder in ("inventory", "env", "project"):
        (private / folder).mkdir(parents=True)
    shutil.copy(site["inventory"], private / "inventory" / "hosts.yml")
    shutil.copy(site["playbook"], private / "project" / "deploy.yml")
    models = repo_with(tmp_path, "next", "next")
    (private / "env" / "extravars").write_text(yaml.safe_dump({"models": str(models)}))
    env = site["env"]
    (private / "env" / "envvars").write_text(yaml.safe_dump({k: env[k] for k in (
        "ANSIBLE_COLLECTIONS_PATH", "PYTHONPATH", "ANSIBLE_NOCOLOR")}))
    started = time.monotonic()
    run = ansible_runner.run(private_data_dir=str(private), playbook="deploy.yml", quiet=True)
    print(f"ansible-runner: {run.status} rc={run.rc} in {time.monotonic() - started:.1f} s")
    artifacts = private / "artifacts" / run.config.ident
    stdout = (artifacts / "stdout").read_text()
    assert run.status == "successful" and run.rc == 0, stdout[-6000:]
    assert {h: c["changed"] for h, c in recap(stdout).items()} == dict.fromkeys(FLEET, 1)
    events = [json.loads(p.read_text()) for p in (artifacts / "job_events").glob("*.json")]
    deploys = {e["event_data"]["host"]: e["event_data"]["res"] for e in events if e["event"] == "runner_on_ok"
               and e["event_data"].get("task_action") == "tritonfleet.triton.deploy"}
    assert set(deploys) == set(FLEET)
    for res in deploys.values():
        changed = [s["task"] for s in res["steps"] if s["status"] == "changed"]
        assert "Model repository staged" in changed and res["release_after"] != res["release_before"], res


def test_host_held_by_an_invoke_run_fails_the_ansible_task_naming_the_holder(deployed, site):
    holder = subprocess.Popen(["sleep", "300"])  # a live process on this machine, as a running `invoke deploy`
    owner = (f"host={socket.gethostname()} pid={holder.pid} run=0123456789ab started={int(time.time())} "
             "task=deploy (run 0123456789ab)")  # as hostlock writes it
    try:
        on_host("gpu06", f"mkdir -p {hostlock.LOCK_DIR} && echo '{owner}' > {hostlock.LOCK_DIR}/owner")
        proc = ansible_playbook(site, EXAMPLES, "--limit", "gpu06")
        assert proc.returncode == 2, show(proc)
        msg = results(proc.stdout)["gpu06"]["msg"]
        assert f"gpu06 is locked by another run: deploy from {socket.gethostname()} (pid {holder.pid}," in msg, msg
        assert on_host("gpu06", f"cat {hostlock.LOCK_DIR}/owner") == owner  # the holder's lock is kept
    finally:
        holder.kill()
        holder.wait()
        on_host("gpu06", f"rm -rf {hostlock.LOCK_DIR}")
