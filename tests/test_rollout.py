"""Fleet rollouts on four real lab hosts: canary, batches, automatic rollback, unreachable hosts, host locks."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time

import pytest

from conftest import LAB_HOSTS, ssh
from labkit import write_inventory
from tritonfleet.engine import hostlock
from tritonfleet import lab as labmod
from tritonfleet.paths import REPO_ROOT

pytestmark = pytest.mark.lab

FLEET = LAB_HOSTS[2:6]  # gpu03..gpu06
EXAMPLES = REPO_ROOT / "examples" / "models"


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory):
    lab.ensure(6)
    for h in FLEET:
        lab.reset(h.name)
    path = tmp_path_factory.mktemp("inv") / "hosts.yml"
    write_inventory(path, {h.name: {} for h in FLEET}, group="fleet")
    return path


def run(inventory, *args, timeout=900):
    return subprocess.run(["invoke", *args, "--inventory", str(inventory), "--json"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def report(proc):
    return json.loads(proc.stdout)


def releases(inventory) -> dict[str, str]:
    proc = run(inventory, "status", "--group", "fleet")
    return {h["name"]: h["release"] for h in report(proc)["hosts"]}


def repo_with(tmp_path, name, marker: str):
    """The example repository with one changed model, so a rollout has a new release to push."""
    repo = tmp_path / name
    shutil.copytree(EXAMPLES, repo)
    with open(repo / "add_sub" / "1" / "model.py", "a") as fh:
        fh.write(f"\n# release marker: {marker}\n")
    return repo


@pytest.fixture(scope="module")
def good_fleet(inventory):
    proc = run(inventory, "rollout", "--group", "fleet", "--canary", "1", "--batch", "2")
    return proc


def test_good_release_reaches_all_hosts_canary_first(good_fleet, inventory):
    assert good_fleet.returncode == 0, good_fleet.stderr[-3000:]
    result = report(good_fleet)
    assert [(h["name"], h["batch"], h["state"]) for h in result["hosts"]] == [
        ("gpu03", 1, "changed"), ("gpu04", 2, "changed"), ("gpu05", 2, "changed"), ("gpu06", 3, "changed")]
    assert good_fleet.stderr.index("canary: gpu03") < good_fleet.stderr.index("batch 2: gpu04, gpu05")
    live = releases(inventory)
    assert len(set(live.values())) == 1 and all(live.values())


def model_that_fails_to_load(repo):
    model_py = repo / "str_upper" / "1" / "model.py"
    model_py.write_text("import package_that_is_not_installed\n" + model_py.read_text())
    return ["str_upper", "package_that_is_not_installed"]


def model_that_answers_wrong(repo):
    """add_sub still answers what it always did; its smoke spec now expects another sum."""
    spec = repo / "add_sub" / "smoke.yaml"
    spec.write_text(spec.read_text().replace("OUTPUT0: [1.5, 2.5, 4, 5]", "OUTPUT0: [1.5, 2.5, 4, 6]"))
    return ["model 'add_sub': answer over", "expected [1.5, 2.5, 4. , 6. ]"]


@pytest.mark.parametrize("break_release", [model_that_fails_to_load, model_that_answers_wrong])
def test_bad_release_stops_at_canary_which_rolls_back(good_fleet, inventory, tmp_path, break_release):
    before = releases(inventory)
    untouched = {h.name: ssh(h, "cat /var/lib/tritonfleet/releases").stdout for h in FLEET[1:]}
    repo = repo_with(tmp_path, "bad", "bad")
    reasons = break_release(repo)
    proc = run(inventory, "rollout", "--group", "fleet", "--models", str(repo))
    assert proc.returncode == 1
    result = report(proc)
    states = {h["name"]: h["state"] for h in result["hosts"]}
    assert states == {"gpu03": "rolled back", "gpu04": "not reached", "gpu05": "not reached",
                      "gpu06": "not reached"}
    canary = result["hosts"][0]
    assert canary["release_after"] == canary["release_before"] == before["gpu03"]
    assert all(reason in canary["error"] for reason in reasons), canary["error"]
    assert "rollout stopped" in proc.stderr
    # the others were never touched, and the whole fleet serves one release again
    assert {h.name: ssh(h, "cat /var/lib/tritonfleet/releases").stdout for h in FLEET[1:]} == untouched
    assert releases(inventory) == before
    smoke = subprocess.run(["invoke", "smoke", "--host", "gpu03", "--inventory", str(inventory)], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=300)
    assert smoke.returncode == 0, smoke.stderr[-2000:]


def test_host_that_goes_away_is_unreachable_and_the_rest_complete(good_fleet, inventory, tmp_path):
    repo = repo_with(tmp_path, "next", "next")
    proc = subprocess.Popen(["invoke", "rollout", "--group", "fleet", "--batch", "2", "--max-fail", "1",
                             "--models", str(repo), "--inventory", str(inventory), "--json"], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    stderr_lines: list[str] = []
    stopped = threading.Event()

    def watch():
        for line in proc.stderr:
            stderr_lines.append(line)
            if "batch 2:" in line and not stopped.is_set():
                labmod.stop_host("gpu06")  # gpu06 is in the last batch: it goes away mid-rollout
                stopped.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        out = proc.stdout.read()  # the watcher thread reads stderr
        proc.wait(timeout=900)
        watcher.join(timeout=30)
        assert stopped.is_set()
        result = json.loads(out)
        states = {h["name"]: h["state"] for h in result["hosts"]}
        assert states == {"gpu03": "changed", "gpu04": "changed", "gpu05": "changed", "gpu06": "unreachable"}
        assert proc.returncode == 1 and not result["stopped"]
        assert "UNREACHABLE" in "".join(stderr_lines)
    finally:
        if proc.poll() is None:
            proc.kill()
        labmod.start_host("gpu06")
    # gpu06 catches up on the next rollout, which changes nothing elsewhere
    proc = run(inventory, "rollout", "--group", "fleet", "--batch", "4", "--models", str(repo))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {h["name"]: h["state"] for h in report(proc)["hosts"]} == {
        "gpu03": "ok", "gpu04": "ok", "gpu05": "ok", "gpu06": "changed"}
    assert len(set(releases(inventory).values())) == 1


def test_manual_rollback_returns_to_the_previous_release(good_fleet, inventory):
    before = releases(inventory)["gpu04"]
    history = ssh(FLEET[1], "cat /var/lib/tritonfleet/releases").stdout.splitlines()
    proc = run(inventory, "rollback", "--host", "gpu04")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = releases(inventory)["gpu04"]
    previous = history[-2].split()
    assert after != before and after == f"{previous[0]}+{previous[1][:12]}"


def test_second_rollout_on_a_locked_host_fails_fast_naming_the_holder(good_fleet, inventory, tmp_path):
    repo = repo_with(tmp_path, "locked", "locked")
    first = subprocess.Popen(["invoke", "rollout", "--host", "gpu05", "--models", str(repo), "--inventory",
                              str(inventory)], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while ssh(FLEET[2], f"test -d {hostlock.LOCK_DIR}").returncode != 0:
            assert time.monotonic() < deadline and first.poll() is None, "first run never took the lock"
            time.sleep(0.2)
        t0 = time.monotonic()
        second = run(inventory, "rollout", "--host", "gpu05")
        elapsed = time.monotonic() - t0
        assert second.returncode == 1
        assert "gpu05 is locked by another run: deploy from" in second.stderr  # a rollout runs deploy.yml
        assert f"(pid {first.pid}," in second.stderr
        print(f"second run refused after {elapsed:.1f} s")
    finally:
        first.communicate(timeout=600)
    assert first.returncode == 0


def test_stale_lock_from_a_dead_run_is_taken_over(good_fleet, inventory):
    dead = subprocess.Popen(["true"])
    dead.wait()
    import socket
    owner = f"host={socket.gethostname()} pid={dead.pid} run=deadbeef started={int(time.time())} task=deploy"
    assert ssh(FLEET[2], f"mkdir -p {hostlock.LOCK_DIR} && echo '{owner}' > {hostlock.LOCK_DIR}/owner").returncode == 0
    proc = run(inventory, "deploy", "--host", "gpu05")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "took over a stale lock" in proc.stderr
    assert ssh(FLEET[2], f"test -d {hostlock.LOCK_DIR}").returncode != 0  # released at the end


def test_ctrl_c_mid_rollout_leaves_no_lock_and_no_half_release(good_fleet, inventory, tmp_path):
    """Ctrl-C as a terminal sends it (to the whole process group, rsync and ssh included) while batch 2 runs."""
    import os
    import signal

    repo = repo_with(tmp_path, "interrupted", "interrupted")
    proc = subprocess.Popen(["invoke", "rollout", "--group", "fleet", "--batch", "1", "--models", str(repo),
                             "--inventory", str(inventory), "--json"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, start_new_session=True)
    sent = threading.Event()

    def watch():
        for line in proc.stderr:
            if "batch 2:" in line and not sent.is_set():
                os.killpg(proc.pid, signal.SIGINT)
                sent.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    out = proc.stdout.read()
    proc.wait(timeout=600)
    watcher.join(timeout=30)
    assert sent.is_set() and proc.returncode == 130
    states = {h["name"]: h["state"] for h in json.loads(out)["hosts"]}
    assert states["gpu03"] == "changed"
    assert states["gpu05"] == states["gpu06"] == "not reached"
    for h in FLEET:
        assert ssh(h, f"test -d {hostlock.LOCK_DIR}").returncode != 0, f"{h.name} still locked"
        top = ssh(h, "tail -n 1 /var/lib/tritonfleet/releases").stdout.split()
        tree = ssh(h, "readlink /opt/tritonserver").stdout.strip()
        models = ssh(h, "readlink /srv/tritonfleet/models").stdout.strip()
        assert tree == f"/opt/tritonfleet/releases/{top[0]}" and models.endswith(f"/{top[1]}"), h.name
        assert ssh(h, "ls -d /opt/tritonfleet/releases/.incoming-* /srv/tritonfleet/models-releases/.incoming-*"
                   ).returncode != 0, f"{h.name} has a half-pushed release"
    # the next rollout converges the fleet on one release
    proc = run(inventory, "rollout", "--group", "fleet", "--batch", "4", "--models", str(repo))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(set(releases(inventory).values())) == 1
