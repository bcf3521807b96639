"""The inventory loader reads Ansible's YAML format with Ansible's precedence, and reports bad input clearly;
a task uses the inventory given on its command line, else the one Invoke's configuration names."""

import os
import textwrap

import pytest
import yaml

from labkit import invoke_here as invoke, local_inventory, show
from tritonfleet.errors import InventoryError
from tritonfleet.engine.inventory import DEFAULT_INVENTORY, load_inventory


def write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def ansible_inventory(tmp_path):
    """An inventory as Ansible users write it: nested groups, group_vars/ and host_vars/ folders."""
    inv = write(tmp_path, "hosts.yml", """\
        all:
          vars:
            level: all-inline
            ansible_user: deploy
          hosts:
            lonely: {ansible_host: 192.0.2.9}
          children:
            gpu:
              vars:
                level: gpu-inline
                from_gpu: yes
                file_wins: gpu-inline
              children:
                a100:
                  vars:
                    level: a100-inline
                  hosts:
                    box1:
                      ansible_host: 192.0.2.1
                      ansible_port: 2222
                    box2:
                      level: box2-inline
            zeta:
              vars: {level: zeta-inline, shared: zeta}
              hosts:
                box1:
            alpha:
              vars: {shared: alpha}
              hosts:
                box1:
        """)
    write(tmp_path, "group_vars/all.yml", "file_wins: all-file\nfrom_all_file: 1\n")
    write(tmp_path, "group_vars/a100/main.yml", "model_repository: /models/a100\n")
    write(tmp_path, "group_vars/zeta.yml", "file_wins: zeta-file\n")
    write(tmp_path, "host_vars/box2.yml", "level: box2-file\n")
    return inv


def test_ships_lab_group_with_ten_hosts_of_three_releases_and_strict_host_keys():
    inv = load_inventory(DEFAULT_INVENTORY)
    lab = inv.select(group="lab")
    assert [h.name for h in lab] == [f"gpu{i:02d}" for i in range(1, 11)]
    assert [h.address for h in lab] == [f"10.213.0.{10 + i}" for i in range(1, 11)]
    assert [h.vars.get("lab_suite", "bookworm") for h in lab] == ["bookworm"] * 8 + ["bullseye", "trixie"]
    gpu01 = lab[0]
    assert gpu01.user == "root"
    assert gpu01.key_file == "/var/lib/tritonfleet/lab/ssh/id_ed25519"
    assert gpu01.known_hosts_file == "/var/lib/tritonfleet/lab/ssh/known_hosts"
    assert gpu01.ssh_option("StrictHostKeyChecking") == "yes"


def test_connection_vars_and_groups(ansible_inventory):
    inv = load_inventory(ansible_inventory)
    box1 = inv.host("box1")
    assert (box1.address, box1.port, box1.user) == ("192.0.2.1", 2222, "deploy")
    assert set(box1.groups) == {"gpu", "a100", "zeta", "alpha"}
    assert inv.host("box2").address == "box2"  # no ansible_host: the name is the address, as in Ansible
    assert [h.name for h in inv.select(group="gpu")] == ["box1", "box2"]
    assert [h.name for h in inv.select()] == ["lonely", "box1", "box2"]


def test_precedence_follows_ansible(ansible_inventory):
    inv = load_inventory(ansible_inventory)
    box1 = inv.host("box1").vars
    # depth 2 (a100) beats depth 1 (gpu, zeta, alpha): children override parents
    assert box1["level"] == "a100-inline"
    # between siblings of the same depth, the name sorting last wins (zeta over alpha)
    assert box1["shared"] == "zeta"
    assert box1["from_gpu"] is True and box1["from_all_file"] == 1
    assert box1["model_repository"] == "/models/a100"
    # group_vars/ files beat the inventory's vars of every group: all.yml beats gpu's inline vars (box2), and
    # the files of the other groups beat all.yml (box1 is in zeta)
    assert inv.host("box2").vars["file_wins"] == "all-file" and box1["file_wins"] == "zeta-file"
    assert inv.host("lonely").vars["level"] == "all-inline"
    # host vars beat group vars; host_vars/ files beat inline host vars
    assert inv.host("box2").vars["level"] == "box2-file"


def test_group_priority_overrides_name_order(tmp_path):
    inv = write(tmp_path, "hosts.yml", """\
        all:
          children:
            alpha: {vars: {x: alpha, ansible_group_priority: 10}, hosts: {h: {}}}
            zeta: {vars: {x: zeta}, hosts: {h: {}}}
        """)
    vars_ = load_inventory(inv).host("h").vars
    assert vars_["x"] == "alpha"
    assert "ansible_group_priority" not in vars_  # Ansible reads it as the group's priority, not as a var


def test_each_var_is_rendered_after_the_vars_it_uses_wherever_they_are_set(tmp_path):
    inv = write(tmp_path, "hosts.yml", """\
        all:
          vars:
            url: "http://{{ ansible_host }}:{{ triton_http_port }}"
          hosts:
            h1: {ansible_host: 192.0.2.1, ansible_port: "{{ base_port + 1 }}"}
        """)
    write(tmp_path, "host_vars/h1/ports.yml", "triton_http_port: '{{ base_port }}'\nbase_port: 2221\n")
    h1 = load_inventory(inv).host("h1")
    assert h1.vars["url"] == "http://192.0.2.1:2221"
    assert h1.port == 2222  # rendered to text, then read into its type


def test_an_error_names_the_file_and_line_that_set_the_var(tmp_path):
    inv = write(tmp_path, "hosts.yml", "all:\n  children:\n    gpu:\n      hosts: {h1: }\n")
    write(tmp_path, "group_vars/gpu.yml", "# ports\nansible_port: ssh\n")
    with pytest.raises(InventoryError) as err:
        load_inventory(inv).host("h1")
    assert (err.value.file, err.value.line) == (str(tmp_path / "group_vars" / "gpu.yml"), 2)
    assert "host h1: ansible_port is 'ssh'" in str(err.value)


def test_jinja_in_vars_uses_host_vars(tmp_path):
    inv = write(tmp_path, "hosts.yml", """\
        all:
          vars:
            base: /data
            model_repository: "{{ base }}/{{ inventory_hostname }}"
            key: "{{ inventory_dir }}/id"
            triton_extra_args: ["--log-file={{ base }}/triton.log"]
            triton_backend_config: {python: {shm-default-byte-size: "{{ 2 * 1024 }}"}}
          hosts: {h1: {}}
        """)
    v = load_inventory(inv).host("h1").vars
    assert v["triton_extra_args"] == ["--log-file=/data/triton.log"]
    assert v["triton_backend_config"] == {"python": {"shm-default-byte-size": "2048"}}
    assert v["model_repository"] == "/data/h1"
    assert v["key"] == f"{tmp_path}/id"


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    inv = write(tmp_path, "hosts.yml", "all:\n  hosts:\n    gpu01: {ansible_host: 10.0.0.1\n    gpu02: {}\n")
    with pytest.raises(InventoryError) as err:
        load_inventory(inv)
    assert str(inv) in str(err.value)
    assert err.value.line == 4
    assert "YAML syntax error" in str(err.value)


def test_unknown_group_key_is_reported_with_line(tmp_path):
    inv = write(tmp_path, "hosts.yml", "all:\n  children:\n    lab:\n      hostz:\n        a: {}\n")
    with pytest.raises(InventoryError) as err:
        load_inventory(inv)
    assert err.value.line == 4 and "unknown key 'hostz'" in str(err.value)


def test_unknown_host_and_group_name_the_known_ones():
    inv = load_inventory(DEFAULT_INVENTORY)
    with pytest.raises(InventoryError) as err:
        inv.select(host="gpu99")
    assert "gpu99" in str(err.value) and "gpu01" in str(err.value) and "gpu08" in str(err.value)
    with pytest.raises(InventoryError) as err:
        inv.select(group="nope")
    assert "nope" in str(err.value) and "lab" in str(err.value)


def test_empty_inventory_and_undefined_jinja_are_errors(tmp_path):
    with pytest.raises(InventoryError, match="empty"):
        load_inventory(write(tmp_path, "empty.yml", "\n"))
    inv = write(tmp_path, "bad.yml", "all:\n  hosts:\n    h: {x: '{{ nothere }}'}\n")
    with pytest.raises(InventoryError, match="nothere"):
        load_inventory(inv).host("h")


# which inventory a task uses: --inventory, else Invoke's configuration (section tritonfleet)

def _invoke_without_tritonfleet_env(*args, **env):
    """`invoke ARGS` with only the INVOKE_TRITONFLEET_* variables given here, whatever this shell has."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_TRITONFLEET_")}
    return invoke(*args, env={**clean, **env})


def test_a_config_file_sets_the_default_inventory(tmp_path):
    inv = local_inventory(tmp_path / "hosts.yml", names=("configured01",))
    config = tmp_path / "invoke.yaml"
    config.write_text(yaml.safe_dump({"tritonfleet": {"inventory": inv}}))
    proc = _invoke_without_tritonfleet_env("-f", str(config), "smoke", "--check")
    assert proc.returncode == 1, show(proc)
    assert "configured01 UNREACHABLE" in proc.stderr, show(proc)


def test_the_command_line_beats_the_environment_which_beats_the_default(tmp_path):
    configured = local_inventory(tmp_path / "configured.yml", names=("configured01",))
    given = local_inventory(tmp_path / "given.yml", names=("given01",))
    proc = _invoke_without_tritonfleet_env("smoke", "--check", "--inventory", given,
                                           INVOKE_TRITONFLEET_INVENTORY=configured)
    assert proc.returncode == 1 and "given01 UNREACHABLE" in proc.stderr, show(proc)
    assert "configured01" not in proc.stderr
    proc = _invoke_without_tritonfleet_env("smoke", "--check", INVOKE_TRITONFLEET_INVENTORY=configured)
    assert proc.returncode == 1 and "configured01 UNREACHABLE" in proc.stderr, show(proc)


def test_forks_from_the_environment_is_checked_like_the_option(tmp_path):
    inv = local_inventory(tmp_path / "hosts.yml")
    proc = _invoke_without_tritonfleet_env("smoke", "--check", "--inventory", inv, INVOKE_TRITONFLEET_FORKS="abc")
    assert proc.returncode == 2 and "--forks must be a whole number, got 'abc'" in proc.stderr, show(proc)
    assert "Traceback" not in proc.stderr
