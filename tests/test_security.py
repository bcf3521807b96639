"""Security on real lab hosts (gpu07, gpu08): host keys, sudo for non-root users, quoting with hostile
names and values, file ownership and modes, bind addresses, and redaction of secret vars."""

from __future__ import annotations

import os
import secrets as pysecrets
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from labkit import ADDRESSES, ensure_mine, fault_log, invoke, on_host, report_of, show, write_inventory  # noqa: F401
from tritonfleet import lab as labmod
from tritonfleet.engine.connection import HostConnection
from tritonfleet.engine.inventory import load_inventory
from tritonfleet.paths import REPO_ROOT

pytestmark = pytest.mark.lab

EXAMPLES = REPO_ROOT / "examples" / "models"
HOST = "gpu08"


def lab_key_lines(address: str) -> list[str]:
    return [ln for ln in labmod.KNOWN_HOSTS.read_text().splitlines() if ln.split()[0] == address]


def deploy(*args, host=HOST, timeout=900, env=None):
    proc = invoke("deploy", "--host", host, "--json", *args, timeout=timeout, env=env)
    return proc, report_of(proc)


def host_run(report, name):
    return next(h for h in report["hosts"] if h["host"] == name)


@pytest.fixture(scope="module")
def deployed(lab):
    ensure_mine()
    lab.reset(HOST)
    proc, report = deploy()
    assert proc.returncode == 0, show(proc)
    return report


# ---------------------------------------------------------------------------------------------- host keys

def test_unknown_and_changed_host_key_stop_only_that_host(deployed, tmp_path, fault_log):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    wrong = tmp_path / "wrong_known_hosts"  # gpu07's key recorded under gpu08's address
    wrong.write_text("".join(f"{ADDRESSES[HOST]} {' '.join(ln.split()[1:])}\n"
                             for ln in lab_key_lines(ADDRESSES["gpu07"])))
    outcomes = {}
    for label, known in (("unknown", empty), ("changed", wrong)):
        inv = write_inventory(tmp_path / f"{label}.yml", {
            "gpu07": {},
            HOST: {"ansible_ssh_common_args": f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes"},
        })
        proc, report = deploy("--inventory", inv, host=f"gpu07,{HOST}")
        assert proc.returncode == 1, show(proc)
        bad, good = host_run(report, HOST), host_run(report, "gpu07")
        assert bad["unreachable"] and bad["steps"] == []
        assert good["failed"] == 0 and not good["unreachable"] and good["ok"] > 0, show(proc)
        assert "UNREACHABLE" in proc.stderr
        outcomes[label] = bad["error"].splitlines()[0]
    assert "is not in" in outcomes["unknown"] and str(empty) in outcomes["unknown"]
    assert "HOST KEY CHANGED" in outcomes["changed"]
    assert empty.read_text() == "", "strict checking must not record keys"
    fault_log("Security", "gpu08's key missing from known_hosts (gpu07 in the same run)",
              f"gpu08 UNREACHABLE `{outcomes['unknown'].split(': ', 1)[1].replace(str(empty), 'KNOWN_HOSTS')}`, "
              "nothing run on it; gpu07 deployed; exit 1")
    fault_log("Security", "gpu08's address listed with another host's key (a changed key)",
              f"gpu08 UNREACHABLE `{outcomes['changed'].split(': ', 1)[1]}`; gpu07 deployed; exit 1")


def test_accept_new_records_a_new_key_and_still_refuses_a_changed_one(deployed, tmp_path, fault_log):
    known = tmp_path / "known_hosts"
    known.write_text("")
    inv = write_inventory(tmp_path / "hosts.yml", {HOST: {}}, known_hosts=known,
                          lab_vars={"tritonfleet_host_key_policy": "accept-new"})
    proc, report = deploy("--inventory", inv)
    assert proc.returncode == 0, show(proc)
    recorded = {tuple(ln.split()[1:3]) for ln in known.read_text().splitlines() if ln.strip()}
    lab_keys = {tuple(ln.split()[1:3]) for ln in lab_key_lines(ADDRESSES[HOST])}
    assert recorded and recorded <= lab_keys, (recorded, lab_keys)
    # OpenSSH (rsync, bundle stream) with the same policy: a new known_hosts gets the key from ssh itself
    known2 = tmp_path / "known_hosts2"
    known2.write_text("")
    inv2 = write_inventory(tmp_path / "hosts2.yml", {HOST: {}}, known_hosts=known2,
                           lab_vars={"tritonfleet_host_key_policy": "accept-new"})
    conn = HostConnection(load_inventory(inv2).host(HOST))
    try:
        assert "StrictHostKeyChecking=accept-new" in conn.ssh_argv()
        res = subprocess.run(conn.ssh_argv() + [conn.target, "true"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
        assert res.returncode == 0, res.stderr
    finally:
        conn.close()
    assert known2.read_text().strip(), "ssh accept-new must record the key"
    # a changed key is refused even with accept-new, by paramiko and by OpenSSH
    wrong = "".join(f"{ADDRESSES[HOST]} {' '.join(ln.split()[1:])}\n" for ln in lab_key_lines(ADDRESSES["gpu07"]))
    known.write_text(wrong)
    proc, report = deploy("--inventory", inv)
    assert proc.returncode == 1 and host_run(report, HOST)["unreachable"], show(proc)
    assert "HOST KEY CHANGED" in proc.stderr
    known2.write_text(wrong)
    conn = HostConnection(load_inventory(inv2).host(HOST))
    try:
        res = subprocess.run(conn.ssh_argv() + [conn.target, "true"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    finally:
        conn.close()
    assert res.returncode == 255 and "HOST IDENTIFICATION HAS CHANGED" in res.stderr, res.stderr
    fault_log("Security", "`tritonfleet_host_key_policy: accept-new` with an empty known_hosts, then with a "
              "wrong key", "new host: its key is appended (paramiko and OpenSSH) and the deploy passes; "
              "changed key: UNREACHABLE `HOST KEY CHANGED`, exit 1 (ssh: `REMOTE HOST IDENTIFICATION HAS CHANGED`)")


# ---------------------------------------------------------------------------------------------- redaction

def test_secret_vars_are_redacted_in_human_and_json_output(deployed, tmp_path, fault_log):
    license_key = "LK-" + pysecrets.token_hex(8)
    token = "tok" + pysecrets.token_hex(8)
    inv = write_inventory(tmp_path / "hosts.yml", {HOST: {
        "tritonfleet_secret_vars": ["license_key"],
        "license_key": license_key,
        "registry_token": token,
        # the secret ends up in the unit file: the --check diff would show it
        "triton_extra_args": [f"--id=tf-{license_key}-{token}"],
    }})
    proc, report = deploy("--inventory", inv, "--check", "--diff", "--verbose")
    assert proc.returncode == 0, show(proc)
    assert report["check"] and report["changed"] >= 1
    text = proc.stdout + proc.stderr
    assert license_key not in text and token not in text
    assert "--id=tf-********-********" in proc.stderr and "--id=tf-********-********" in proc.stdout
    # and in an error message (refused before any host is touched)
    bad = write_inventory(tmp_path / "bad.yml", {HOST: {"hub_token": token,
                                                       "triton_model_control_mode": "{{ hub_token }}"}})
    proc = invoke("deploy", "--host", HOST, "--inventory", bad)
    assert proc.returncode == 2, show(proc)
    assert token not in proc.stdout + proc.stderr and "triton_model_control_mode is '********'" in proc.stderr
    fault_log("Security", "secret vars (`tritonfleet_secret_vars: [license_key]`, `registry_token`, `hub_token`) "
              "used in the unit (shown by `--check` diff) and in an error message",
              "values shown as `********` in the diff, `--json` and the error; the raw values appear nowhere")


# ---------------------------------------------------------------------------------------------- quoting

HOSTILE = "add sub 'q\" ;$(cd;touch tfpwned1);`cd;touch tfpwned2`;x"


def _pwned(tag: str) -> list[str]:
    found = [str(p) for d in (Path("/tmp"), Path.home(), REPO_ROOT, Path("/")) for p in d.glob(f"tfpwned*{tag}")]
    found += [str(p) for d in (Path("/tmp"), Path.home(), REPO_ROOT) for p in d.glob("tfpwned[12]")]
    return found


def test_hostile_names_and_values_run_nothing(deployed, tmp_path, fault_log):
    tag = pysecrets.token_hex(4)
    # 1. a control-machine path full of shell syntax: legal, synced and served (rsync argv, --protect-args)
    repo = tmp_path / f"repo 'q\";$(touch /tmp/tfpwned3{tag});`touch /tmp/tfpwned4{tag}`" / "models"
    shutil.copytree(EXAMPLES, repo)
    proc, report = deploy("--models", str(repo))
    assert proc.returncode == 0, show(proc)
    # 2. a model folder name with spaces, quotes, ;, $(...), backticks: Triton itself accepts it, but its Python
    #    backend runs `bash -c "... stub <model path> ..."` unquoted, so the payload ran as user triton in the lab
    #    (touch denied only because the cwd was /). Refused on the control machine with that reason.
    bad = tmp_path / "bad"
    shutil.copytree(EXAMPLES, bad)
    hostile = bad / HOSTILE
    shutil.copytree(EXAMPLES / "add_sub", hostile)
    cfg = hostile / "config.pbtxt"
    cfg.write_text("\n".join(ln for ln in cfg.read_text().splitlines() if not ln.startswith("name:")) + "\n")
    proc2, _ = deploy("--models", str(bad))
    assert proc2.returncode == 2 and "bash -c" in proc2.stderr and "invalid model folder name" in proc2.stderr, \
        show(proc2)
    shutil.rmtree(hostile)
    shutil.copytree(EXAMPLES / "add_sub", bad / "x\n$(touch tfpwned1)")
    proc3, _ = deploy("--models", str(bad))
    assert proc3.returncode == 2 and "control characters" in proc3.stderr, show(proc3)
    # 3. the same in a host var that reaches Triton's command line: refused before any host is touched
    path = f"/srv/tritonfleet/m dir 'q\";$(touch /tmp/tfpwned5{tag});`touch /tmp/tfpwned6{tag}`"
    inv = write_inventory(tmp_path / "hosts.yml", {HOST: {"triton_model_repository_path": path}})
    proc4, _ = deploy("--inventory", inv)
    assert proc4.returncode == 2 and "triton_model_repository_path" in proc4.stderr, show(proc4)
    # 4. a newline in a host var that would end up in a unit line and a command: refused before any host is touched
    inv5 = write_inventory(tmp_path / "nl.yml", {HOST: {
        "triton_user": f"triton\nExecStartPre=/usr/bin/touch /tmp/tfpwned7{tag}"}})
    proc5, _ = deploy("--inventory", inv5)
    assert proc5.returncode == 2 and "not a valid system user name" in proc5.stderr, show(proc5)
    found = on_host(HOST, "find / -xdev -name 'tfpwned*' 2>/dev/null; true")
    assert found == "", found
    assert _pwned(tag) == []
    assert "touch" not in on_host(HOST, "grep -h ExecStartPre /etc/systemd/system/tritonserver.service; true")
    proc, _ = deploy()
    assert proc.returncode == 0, show(proc)
    fault_log("Security", "model repository on the control machine under a path with spaces, quotes, `;`, "
              "`$(...)`, backticks", "synced and served; no command ran (no tfpwned* file on the host or here)")
    fault_log("Security", "model folder `" + HOSTILE.replace("`", "'") + "`",
              "first try (before the fix): Triton accepted it and its Python backend ran the `$(...)`/backtick "
              "payload through `bash -c` as user triton (touch denied in /), the model failed with 'Expected 9 "
              "arguments'. Now refused before any host is touched (exit 2) with that reason")
    fault_log("Security", "model folder name with a newline", "refused before any host is touched: "
              "`contains control characters`, exit 2")
    fault_log("Security", "`triton_model_repository_path` with spaces, quotes, `;`, `$(...)`",
              "refused before any host is touched (exit 2): it reaches Triton's unquoted `bash -c`")
    fault_log("Security", "`triton_user` holding a newline and an `ExecStartPre=` line",
              "refused before any host is touched (exit 2): `not a valid system user name`; the unit is not written")


# ---------------------------------------------------------------------------------------------- files

def test_files_owned_by_root_and_not_writable_by_the_service_user(deployed, fault_log):
    paths = "/opt/tritonfleet /opt/tritonserver/ /srv/tritonfleet /etc/systemd/system/tritonserver.service"
    world = on_host(HOST, f"find {paths} -perm -0002 ! -type l")
    assert world == "", f"world-writable: {world}"
    stub = "/opt/tritonserver/backends/python/triton_python_backend_stub"
    not_root = on_host(HOST, f"find -L {paths} ! -user root").splitlines()
    real_stub = on_host(HOST, f"readlink -f {stub}")
    assert [p for p in not_root if on_host(HOST, f"readlink -f {p}") != real_stub] == [], not_root
    for target in ("/etc/systemd/system/tritonserver.service", "/opt/tritonserver/bin/tritonserver",
                   "/opt/tritonserver/lib", "/opt/tritonserver/backends/python/libtriton_python.so",
                   "/srv/tritonfleet/models/add_sub/1/model.py", "/srv/tritonfleet/models/add_sub",
                   "/opt/tritonfleet/releases"):
        res = labssh(f"runuser -u triton -- test -w {target}")
        assert res.returncode != 0, f"{target} is writable by triton"
    assert labssh("runuser -u triton -- cat /srv/tritonfleet/models/add_sub/1/model.py").returncode == 0
    assert labssh("runuser -u triton -- touch /srv/tritonfleet/models/add_sub/1/x").returncode != 0
    fault_log("Security", "ownership and modes after a deploy",
              "unit, release tree and models owned by root; nothing world-writable under /opt/tritonfleet, "
              "/opt/tritonserver, /srv/tritonfleet or the unit; models readable, not writable, by `triton`; "
              "the one file `triton` owns is the Python stub (the backend may chmod it when a model loads)")


def labssh(command: str):
    from conftest import ssh
    return ssh(ADDRESSES[HOST], command)


def test_server_binds_to_the_addresses_the_inventory_names(deployed, tmp_path, fault_log):
    inv = write_inventory(tmp_path / "hosts.yml", {HOST: {"triton_http_address": "127.0.0.1",
                                                          "triton_grpc_address": "127.0.0.1",
                                                          "triton_ready_timeout": 60}})
    try:
        proc, report = deploy("--inventory", inv)
        assert proc.returncode == 0, show(proc)  # readiness and smoke go through ports forwarded over SSH
        listening = on_host(HOST, "ss -ltnH")
        # gRPC listens on an IPv4-mapped socket: [::ffff:127.0.0.1] is 127.0.0.1
        ports = sorted({ln.split()[3].replace("[::ffff:127.0.0.1]", "127.0.0.1") for ln in listening.splitlines()
                        if ln.split()[3].endswith((":8000", ":8001"))})
        assert ports == ["127.0.0.1:8000", "127.0.0.1:8001"], listening
        smoke = next(s for s in report["hosts"][0]["steps"] if s["module"] == "smoke")
        assert smoke["status"] == "ok"
        # status and the doctor reach the loopback-bound server through the same SSH forwards
        status = invoke("status", "--host", HOST, "--inventory", inv, "--json")
        assert status.returncode == 0, show(status)
        row = report_of(status)["hosts"][0]
        assert row["triton_version"] == "2.51.0" and row["drift"] == [], row
        assert row["models"] and set(row["models"].values()) == {"READY"}, row
        doctor = invoke("doctor", "--host", HOST, "--inventory", inv, "--json")
        assert doctor.returncode == 0, show(doctor)
        diagnosis = report_of(doctor)["hosts"][0]["diagnosis"]
        assert diagnosis["ready"] and not [f for f in diagnosis["findings"] if f["severity"] == "error"], diagnosis
    finally:
        restore, _ = deploy()
    assert restore.returncode == 0, show(restore)
    assert "0.0.0.0:8000" in on_host(HOST, "ss -ltnH")
    fault_log("Security", "`triton_http_address: 127.0.0.1`, `triton_grpc_address: 127.0.0.1`",
              "`ss -ltn` on the host shows 127.0.0.1:8000 and 127.0.0.1:8001 only; the deploy passes, its readiness "
              "wait, smoke test, `status` (every model READY) and `doctor` (no error) reaching the server through "
              "ports forwarded over SSH; restored by a deploy without the vars")


# ---------------------------------------------------------------------------------------------- become

PUBKEY = labmod.LAB_KEY.with_suffix(".pub")


@pytest.fixture(scope="module")
def deploy_user(lab):
    """A fresh gpu08 with user `deploy` (the lab key authorized), sudo from the lab mirror, no sudoers rule yet."""
    ensure_mine()
    lab.reset(HOST)
    key = PUBKEY.read_text().strip()
    on_host(HOST, "useradd --create-home --shell /bin/bash deploy && install -d -m 700 -o deploy -g deploy "
                  f"/home/deploy/.ssh && echo '{key}' > /home/deploy/.ssh/authorized_keys && "
                  "chown deploy:deploy /home/deploy/.ssh/authorized_keys && chmod 600 /home/deploy/.ssh/authorized_keys")
    on_host(HOST, "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq sudo",
            timeout=300)
    yield "deploy"
    on_host(HOST, "rm -f /etc/sudoers.d/tritonfleet-test", check=False)


def _sudoers(rules: str) -> None:
    lines = " ".join(shlex.quote(r) for r in rules.splitlines())
    on_host(HOST, f"printf '%s\\n' {lines} > /etc/sudoers.d/tritonfleet-test && chmod 440 "
                  "/etc/sudoers.d/tritonfleet-test && visudo -cf /etc/sudoers.d/tritonfleet-test")


def test_become_with_password_from_environment(deploy_user, tmp_path, fault_log):
    password = "pw-" + pysecrets.token_hex(10)
    on_host(HOST, f"echo 'deploy:{password}' | chpasswd")
    _sudoers("deploy ALL=(ALL:ALL) ALL\ndeploy ALL=(root) NOPASSWD: /usr/bin/rsync")
    inv = write_inventory(tmp_path / "hosts.yml", {HOST: {}}, user="deploy",
                          lab_vars={"ansible_become": True, "tritonfleet_become_password_env": "TF_TEST_BECOME_PW"})
    env = {**os.environ, "TF_TEST_BECOME_PW": password}
    proc, report = deploy("--inventory", inv, "--verbose", env=env)
    assert proc.returncode == 0, show(proc)
    assert report["changed"] > 0
    assert password not in proc.stdout + proc.stderr
    assert on_host(HOST, "systemctl is-active tritonserver") == "active"
    assert on_host(HOST, "stat -c %U /opt/tritonserver/bin/tritonserver") == "root"
    assert on_host(HOST, f"journalctl --no-pager | grep -c -- {password} || true") == "0"
    # a wrong password: the host fails at connect with a clear message, the password is not shown
    bad = {**os.environ, "TF_TEST_BECOME_PW": "wrong-" + pysecrets.token_hex(6)}
    proc2, report2 = deploy("--inventory", inv, env=bad)
    assert proc2.returncode == 1 and "sudo did not accept the become password" in proc2.stderr, show(proc2)
    assert bad["TF_TEST_BECOME_PW"] not in proc2.stdout + proc2.stderr
    fault_log("Security", "SSH as user `deploy`, `ansible_become: true`, sudo asks for a password "
              "(given in the env var named by `tritonfleet_become_password_env`; NOPASSWD only for rsync)",
              f"fresh host deployed through sudo (packages, release stream, unit, rsync), {report['changed']} "
              "changes; the password is nowhere in stdout, stderr or the host's journal")
    fault_log("Security", "the same with a wrong sudo password",
              "host reported UNREACHABLE `sudo did not accept the become password`, exit 1, password not shown")


def test_become_with_nopasswd(deploy_user, tmp_path, fault_log):
    _sudoers("deploy ALL=(ALL:ALL) NOPASSWD: ALL")
    # make the release push and model sync happen again under this sudo mode
    on_host(HOST, "rm -rf /opt/tritonfleet/releases/* /srv/tritonfleet/models-releases/* /srv/tritonfleet/models/*")
    inv = write_inventory(tmp_path / "hosts.yml", {HOST: {}}, user="deploy", lab_vars={"ansible_become": True})
    proc, report = deploy("--inventory", inv)
    assert proc.returncode == 0, show(proc)
    assert report["changed"] > 0
    proc2, report2 = deploy("--inventory", inv)
    assert proc2.returncode == 0 and report2["changed"] == 0, show(proc2)
    fault_log("Security", "SSH as `deploy` with `ansible_become: true` and a NOPASSWD sudo rule",
              "release pushed and models synced again through `sudo -n`; next run changed=0")
