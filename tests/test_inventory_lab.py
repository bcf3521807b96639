"""An Ansible user's inventory habits on real lab hosts (gpu07, gpu08): an INI inventory with group_vars/ beside
it, --limit, -e, a vaulted var made by ansible-vault, and a dynamic inventory script."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from labkit import ADDRESSES, ensure_mine, fault_log, invoke, on_host, report_of, show  # noqa: F401
from tritonfleet import lab as labmod

pytestmark = pytest.mark.lab

HOST = "gpu08"
CONNECTION = (f"ansible_user=root\nansible_ssh_private_key_file={labmod.LAB_KEY}\n"
              f"ansible_ssh_common_args=-o UserKnownHostsFile={labmod.KNOWN_HOSTS} -o StrictHostKeyChecking=yes\n")


@pytest.fixture(scope="module")
def ini_inventory(lab, tmp_path_factory):
    """[inilab] gpu07 gpu08, its group_vars in a file beside the INI file, as Ansible projects keep them."""
    ensure_mine()
    lab.reset(HOST)
    root = tmp_path_factory.mktemp("ini")
    (root / "hosts.ini").write_text(
        "[inilab]\n" + "".join(f"{n} ansible_host={ADDRESSES[n]}\n" for n in ("gpu07", "gpu08")) +
        f"\n[inilab:vars]\n{CONNECTION}")
    (root / "group_vars").mkdir()
    (root / "group_vars" / "inilab.yml").write_text("triton_log_verbose: 1\n")
    return root


def unit_text() -> str:
    return on_host(HOST, "cat /etc/systemd/system/tritonserver.service")


def test_ini_inventory_with_group_vars_deploys_the_limited_hosts(ini_inventory, fault_log):
    inv = str(ini_inventory / "hosts.ini")
    proc = invoke("deploy", "--inventory", inv, "--group", "inilab", "--limit", "gpu0*:!gpu07", "--json")
    assert proc.returncode == 0, show(proc)
    assert [h["host"] for h in report_of(proc)["hosts"]] == [HOST]  # --limit kept gpu07 out
    assert "--log-verbose=1" in unit_text()  # the group var, from group_vars/ beside the INI file
    again = invoke("deploy", "--inventory", inv, "--group", "inilab", "--limit", HOST, "--json")
    assert again.returncode == 0 and report_of(again)["changed"] == 0, show(again)
    fault_log("Inventories (lab hosts)", "an INI inventory (`[inilab]`, `[inilab:vars]`) with `group_vars/inilab.yml` "
              "beside it, `--limit 'gpu0*:!gpu07'`",
              "only gpu08 deployed; `--log-verbose=1` from the group var in its unit; the second run changed=0")


def test_extra_vars_win_and_check_mode_shows_the_diff(ini_inventory):
    before = unit_text()
    proc = invoke("deploy", "--inventory", str(ini_inventory / "hosts.ini"), "--limit", HOST,
                  "-e", "triton_log_verbose=2", "--check", "--diff", "--json")
    assert proc.returncode == 0, show(proc)
    assert "-ExecStart=" in proc.stderr and "--log-verbose=2" in proc.stderr
    assert unit_text() == before


@pytest.mark.skipif(shutil.which("ansible-vault") is None, reason="ansible-vault is not installed (the test extra)")
def test_a_vaulted_connection_var_reaches_the_host(ini_inventory, tmp_path, fault_log):
    password = tmp_path / "vault.pass"
    password.write_text("lab-vault-password\n")
    made = subprocess.run(["ansible-vault", "encrypt_string", "--vault-password-file", str(password),
                           str(labmod.LAB_KEY), "--name", "ansible_ssh_private_key_file"],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert made.returncode == 0, made.stderr
    root = tmp_path / "vaulted"
    (root / "host_vars").mkdir(parents=True)
    (root / "hosts.ini").write_text((ini_inventory / "hosts.ini").read_text().replace(
        f"ansible_ssh_private_key_file={labmod.LAB_KEY}\n", ""))
    (root / "host_vars" / f"{HOST}.yml").write_text(made.stdout)
    inv = str(root / "hosts.ini")
    proc = invoke("smoke", "--inventory", inv, "--limit", HOST, "--vault-password-file", str(password))
    assert proc.returncode == 0, show(proc)
    assert str(labmod.LAB_KEY) not in proc.stdout + proc.stderr  # a decrypted value is a secret
    refused = invoke("smoke", "--inventory", inv, "--limit", HOST)
    assert refused.returncode == 2 and f"{HOST}.yml" in refused.stderr, show(refused)
    fault_log("Inventories (lab hosts)", "the lab key's path as a `!vault` value made by `ansible-vault "
              "encrypt_string`, in `host_vars/gpu08.yml`",
              "with `--vault-password-file` the smoke test reaches gpu08 (the path never printed); without it, "
              "exit 2 naming the file, no host touched")


def test_a_dynamic_inventory_script_names_the_hosts(ini_inventory, tmp_path, fault_log):
    script = tmp_path / "inventory.py"
    script.write_text(f"""#!/usr/bin/env python3
import json, sys
if sys.argv[1:] == ["--list"]:
    print(json.dumps({{"dyn": {{"hosts": ["{HOST}"], "vars": {{"ansible_user": "root",
        "ansible_ssh_private_key_file": "{labmod.LAB_KEY}",
        "ansible_ssh_common_args": "-o UserKnownHostsFile={labmod.KNOWN_HOSTS} -o StrictHostKeyChecking=yes"}}}},
        "_meta": {{"hostvars": {{"{HOST}": {{"ansible_host": "{ADDRESSES[HOST]}"}}}}}}}}))
else:
    print("{{}}")
""")
    script.chmod(0o755)
    proc = invoke("smoke", "--inventory", str(script), "--group", "dyn", "--json")
    assert proc.returncode == 0, show(proc)
    assert [h["host"] for h in report_of(proc)["hosts"]] == [HOST]
    fault_log("Inventories (lab hosts)", "a dynamic inventory script (`--list` JSON with `_meta.hostvars`)",
              "its group `dyn` smoke-tested on gpu08, exit 0")
