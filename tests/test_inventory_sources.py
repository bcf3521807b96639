"""Every inventory source `ansible-playbook -i` takes (INI, YAML, a directory, a dynamic inventory script, a host
list, several at once), host ranges, `ansible-inventory --list`/`--host` output, and bad input: each refused
before any host is touched, naming the file and line or the command. Hermetic: no Ansible needed (the
comparison with Ansible itself is tests/test_inventory_ansible.py)."""

from __future__ import annotations

import json
import textwrap
import time

import pytest

import labkit
from labkit import invoke, show
from tritonfleet.engine import hostrange
from tritonfleet.engine.inventory import ansible_host, ansible_json, ansible_list, load_inventory
from tritonfleet.engine.inventory_script import TIMEOUT_ENV
from tritonfleet.errors import InventoryError

AREA = "Bad input (inventory and vars)"
fault_log = labkit.fault_log  # the fixture, under the name the tests ask for


def write(root, rel: str, text: str, executable: bool = False):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    if executable:
        path.chmod(0o755)
    return path


def refusal(*sources) -> InventoryError:
    with pytest.raises(InventoryError) as err:
        load_inventory([str(s) for s in sources]).select()
    return err.value


def shown(err, tmp_path) -> str:
    return " ".join(line.strip() for line in str(err).splitlines()).replace(f"{tmp_path}/", "")


# host ranges

@pytest.mark.parametrize("pattern, names, port", [
    ("gpu[01:04]", ["gpu01", "gpu02", "gpu03", "gpu04"], None),
    ("gpu[1:10:4]", ["gpu1", "gpu5", "gpu9"], None),
    ("node[a:c]", ["nodea", "nodeb", "nodec"], None),
    ("[:2]x", ["0x", "1x", "2x"], None),
    ("db[1:2]-[x:y]", ["db1-x", "db1-y", "db2-x", "db2-y"], None),
    ("rack[8:9].dc:2022", ["rack8.dc", "rack9.dc"], 2022),
    ("gpu09:2222", ["gpu09"], 2222),
    ("[2001:db8::1]:2200", ["2001:db8::1"], 2200),
    ("fe80::10", ["fe80::10"], None),
    ("10.0.0.[1:2]", ["10.0.0.1", "10.0.0.2"], None),
])
def test_a_host_pattern_expands_as_ansible_expands_it(pattern, names, port):
    assert hostrange.expand(pattern) == (names, port)


@pytest.mark.parametrize("pattern, says", [
    ("gpu[01:16:0]", "step '0': the step must be a whole number, 1 or more"),
    ("gpu[01:16:-1]", "step '-1'"),
    ("gpu[16:01]", "range [16:01] begins after it ends"),
    ("gpu[c:a]", "range [c:a] begins after it ends"),
    ("gpu[01:100]", "a begin with leading zeros needs an end of the same length"),
    ("gpu[1:x]", "must go from a number to a number, or from a letter to a letter"),
    ("gpu[1-4]", "[1-4] is not a range"),
    ("gpu[1:]", "range [1:] has no end"),
    ("gpu[01:04", "'[' is not closed by ']'"),
    ("gpu[0:999999]", "stands for more than 100000 hosts"),
])
def test_a_bad_range_is_refused_in_yaml_and_ini_with_file_and_line(tmp_path, fault_log, pattern, says):
    yaml_err = refusal(write(tmp_path, "hosts.yml", f"all:\n  hosts:\n    gpu00:\n    \"{pattern}\":\n"))
    ini_err = refusal(write(tmp_path, "hosts.ini", f"[gpu]\ngpu00\n{pattern} ansible_user=root\n"))
    assert (yaml_err.line, ini_err.line) == (4, 3) and says in str(yaml_err) and says in str(ini_err), str(ini_err)
    assert f"host pattern '{pattern}'" in str(ini_err)
    fault_log(AREA, f"host range `{pattern}` (Ansible: no host, a Python error, or hosts by the hundred thousand)",
              f"refused when the inventory is read: {shown(ini_err, tmp_path)}")


# INI

def test_ini_groups_children_vars_and_ports(tmp_path):
    inv = load_inventory(write(tmp_path, "hosts", """\
        lonely
        [web]
        web[01:02] ansible_user=deploy
        web03:2222
        [web:vars]
        tier = front end
        [fleet:children]
        web
        late
        [late]
        """))
    assert [g for g in inv.groups] == ["all", "ungrouped", "web", "fleet", "late"]
    assert inv.groups["fleet"].children == ["web", "late"] and list(inv.groups["ungrouped"].hosts) == ["lonely"]
    web03 = inv.host("web03")
    assert (web03.port, web03.vars["tier"], web03.groups) == (2222, "front end", ("fleet", "web"))
    assert web03.origins["ansible_port"] == (str(tmp_path / "hosts"), 4)


def test_ini_values_are_python_literals_as_ansible_reads_them(tmp_path):
    inv = load_inventory(write(tmp_path, "hosts.ini", """\
        [g]
        h i=42 f=1.5 b=True y=yes q="42" qq="'42'" l="[1, 'a']" t="(1, 2)" n=None s=text e=
        [g:vars]
        vi=42
        vq="42"
        vt=two words
        """))
    v = ansible_host(inv, "h")
    assert v == {"i": 42, "f": 1.5, "b": True, "y": "yes", "q": 42, "qq": "42", "l": [1, "a"], "t": [1, 2],
                 "n": None, "s": "text", "e": "", "vi": 42, "vq": "42", "vt": "two words"}


def test_a_var_given_to_a_name_that_is_a_group_and_a_host_goes_to_the_group(tmp_path):
    inv = load_inventory(write(tmp_path, "hosts.ini", "[web]\nweb x=1\nweb02\n"))
    assert ansible_host(inv, "web02") == {"x": 1}  # as Ansible: the group web gets x


# YAML

def test_yaml_host_patterns_and_one_name_sections(tmp_path):
    inv = load_inventory(write(tmp_path, "hosts.yml", """\
        all:
          children:
            gpu:
              hosts:
                gpu[01:03]: {ansible_user: deploy}
                gpu04:2222:
            cpu:
              hosts: cpu01
        """))
    assert inv.group_hosts("gpu") == ["gpu01", "gpu02", "gpu03", "gpu04"] and inv.group_hosts("cpu") == ["cpu01"]
    assert (inv.host("gpu02").user, inv.host("gpu04").port) == ("deploy", 2222)


# directories, several sources, host lists

def test_a_directory_is_read_file_by_file_in_name_order(tmp_path):
    write(tmp_path, "inv/20-web.ini", "[web]\nweb01\n[web:vars]\nfrom=ini\n")
    write(tmp_path, "inv/10-web.yml", "web:\n  hosts: {web02: }\n  vars: {from: yaml}\n")
    write(tmp_path, "inv/sub/hosts", "[db]\ndb01\n")
    write(tmp_path, "inv/notes.txt", "not: [an inventory\n")
    write(tmp_path, "inv/.old.ini", "[old]\nold01\n")
    write(tmp_path, "inv/group_vars/web.yml", "from_group_vars: 1\n")
    inv = load_inventory(tmp_path / "inv")
    assert inv.host_names == ["web02", "web01", "db01"]
    assert inv.host("web02").vars["from"] == "ini"  # the INI file is read after the YAML one
    assert inv.host("web01").vars["from_group_vars"] == 1


def test_several_sources_merge_in_order_each_with_its_group_vars(tmp_path):
    a = write(tmp_path, "a/hosts.yml", "web:\n  hosts:\n    shared: {own: a}\n    a01:\n")
    write(tmp_path, "a/group_vars/web.yml", "site: a\n")
    b = write(tmp_path, "b/hosts.ini", "[web]\nshared own=b\n[db]\nshared\n")
    write(tmp_path, "b/group_vars/web.yml", "site: b\n")
    inv = load_inventory([a, b])
    shared = inv.host("shared")
    assert (shared.vars["own"], shared.vars["site"], shared.groups) == ("b", "b", ("db", "web"))
    assert inv.host("a01").vars["site"] == "b"  # group_vars/ of each source apply to every host, source by source


def test_a_host_list_is_a_source_too(tmp_path):
    inv = load_inventory("gpu01,gpu02:2222,")
    assert inv.group_hosts("ungrouped") == ["gpu01", "gpu02"] and inv.host("gpu02").port == 2222


# dynamic inventory scripts

SCRIPT = """\
    #!/bin/sh
    case "$1" in
      --list) echo '{"gpu": {"hosts": ["gpu01", "gpu02"], "vars": {"ansible_user": "deploy"}}%s}' ;;
      --host) echo '{"rack": "'"$2"'"}' ;;
    esac
    """


def test_a_script_with_meta_is_run_once(tmp_path):
    script = write(tmp_path, "inventory.sh", SCRIPT % ', "_meta": {"hostvars": {"gpu01": {"ansible_port": 2201}}}',
                   executable=True)
    inv = load_inventory(script)
    assert (inv.host("gpu01").port, inv.host("gpu01").user, ansible_host(inv, "gpu02")) == \
        (2201, "deploy", {"ansible_user": "deploy"})


def test_a_script_without_meta_is_asked_for_each_host(tmp_path):
    inv = load_inventory(write(tmp_path, "inventory.sh", SCRIPT % "", executable=True))
    assert [inv.host(h).vars["rack"] for h in ("gpu01", "gpu02")] == ["gpu01", "gpu02"]


def test_an_executable_file_without_a_shebang_is_read_as_a_file(tmp_path):
    inv = load_inventory(write(tmp_path, "hosts.yml", "all:\n  hosts:\n    gpu01:\n", executable=True))
    assert inv.host_names == ["gpu01"]


@pytest.mark.parametrize("what, body, says", [
    ("exits non-zero", "echo 'cannot reach the cloud API' >&2; exit 3",
     "`{script} --list` exited with status 3: cannot reach the cloud API"),
    ("prints bad JSON", "echo '{\"gpu\": '", "`{script} --list` printed something that is not JSON"),
    ("prints a JSON list", "echo '[1, 2]'", "`{script} --list` printed a JSON list, not an object"),
    ("gives _meta without hostvars", "echo '{\"_meta\": {}}'", "_meta.hostvars must be a mapping"),
    ("hangs (its child too)", "sleep 30 & wait", "`{script} --list` did not finish within 0.5 s: stopped"),
])
def test_a_failing_script_is_refused_naming_the_command(tmp_path, fault_log, monkeypatch, what, body, says):
    monkeypatch.setenv(TIMEOUT_ENV, "0.5")
    script = write(tmp_path, "inventory.sh", f"#!/bin/sh\n{body}\n", executable=True)
    started = time.monotonic()
    err = refusal(script)
    assert time.monotonic() - started < 10  # a hang is stopped, the child holding the pipe included
    assert says.format(script=script) in str(err) and err.file == str(script), str(err)
    fault_log(AREA, f"a dynamic inventory script that {what}",
              f"refused before any host is touched: {shown(err, tmp_path)}")


def test_a_failing_script_stops_the_task_with_exit_2(tmp_path, fault_log):
    script = write(tmp_path, "inventory.sh", "#!/bin/sh\necho 'token expired' >&2\nexit 1\n", executable=True)
    proc = invoke("smoke", "--check", "--inventory", str(script), timeout=120)
    assert proc.returncode == 2 and "exited with status 1: token expired" in proc.stderr, show(proc)
    assert "Traceback" not in proc.stderr and "UNREACHABLE" not in proc.stderr + proc.stdout
    fault_log(AREA, "a dynamic inventory script that exits non-zero, `invoke smoke --check`",
              f"exit 2 before any host is touched: `{proc.stderr.strip().splitlines()[0].replace(f'{tmp_path}/', '')}`")


# INI lines, and other input, that Ansible refuses too

@pytest.mark.parametrize("text, line, says", [
    ("[web:vars]\nport 8080\n[web]\nw1\n", 2, "expected key=value, got 'port 8080'"),
    ("[web:hosts]\nw1\n[web:extra]\n", 3, "section [web:extra] has unknown type 'extra'"),
    ("[web group]\nw1\n", 1, "invalid section header '[web group]'"),
    ("[web]\nw1 port\n", 2, "expected key=value after the host, got 'port'"),
    ("[web]\nw1 motd='unclosed\n", 2, "cannot split host line \"w1 motd='unclosed\" as a shell would"),
    ("[web]\nw1:\n", 2, "host pattern 'w1:' ends in ':', which is kept for a port"),
    ("[web:children]\ndb\n", 2, "section [web:children] names group 'db', which is never defined"),
    ("[web:vars]\nport=1\n", 1, "section [web:vars] is for a group that is never defined"),
    ("[web:children]\nweb extra\n[web]\n", 2, "expected a group name, got 'web extra'"),
    ("[a:children]\nb\n[b:children]\na\n", 4, "adding group 'a' as a child of 'b' creates a recursive dependency"),
    ("[web]\nw1 x=\"{[1]: 2}\"\n", 2, "cannot read the value '{[1]: 2}': TypeError"),
])
def test_an_ini_line_ansible_refuses_is_refused_with_file_and_line(tmp_path, fault_log, text, line, says):
    err = refusal(write(tmp_path, "hosts.ini", text))
    assert (err.file, err.line) == (str(tmp_path / "hosts.ini"), line) and says in str(err), str(err)
    fault_log(AREA, f"INI inventory line `{text.splitlines()[line - 1]}`",
              f"refused when the inventory is read, as Ansible refuses it: {shown(err, tmp_path)}")


@pytest.mark.parametrize("rel, text, says", [
    ("aws_ec2.yml", "plugin: amazon.aws.aws_ec2\nregions: [us-east-1]\n",
     "this is an inventory plugin config (plugin: amazon.aws.aws_ec2), which is not read"),
    ("hosts.toml", "[web.hosts.web01]\n", "TOML inventories are not supported"),
    ("inventory.py", "#!/usr/bin/env python3\nprint('{}')\n", "starts with `#!` but is not executable"),
    ("hosts.yml", "- web01\n- web02\n", "inventory must be a mapping of group names"),
    ("hosts.yml", "# nothing yet\n", "inventory is empty"),
    ("missing.ini", None, "cannot read: no such file or directory"),
])
def test_an_input_that_is_not_read_is_named_as_what_it_is(tmp_path, fault_log, rel, text, says):
    path = write(tmp_path, rel, text) if text is not None else tmp_path / rel
    err = refusal(path)
    assert says in str(err) and err.file == str(path), str(err)
    fault_log(AREA, f"`--inventory {rel}`" + (f" holding `{text.splitlines()[0]}`" if text else " (no such file)"),
              f"refused, named as what it is: {shown(err, tmp_path)}")


# ansible-inventory --list / --host

def test_the_listing_has_ansible_inventorys_shape(tmp_path):
    inv = load_inventory(write(tmp_path, "hosts.ini", """\
        lonely
        [web]
        web01 ansible_host=192.0.2.1 x="{{ inventory_hostname }}"
        [empty]
        [all:vars]
        ansible_user=root
        """))
    assert json.loads(ansible_json(ansible_list(inv))) == {
        "_meta": {"hostvars": {"lonely": {"ansible_user": "root"},
                               "web01": {"ansible_host": "192.0.2.1", "ansible_user": "root",
                                         "x": "{{ inventory_hostname }}"}},
                  "profile": "inventory_legacy"},
        "all": {"children": ["ungrouped", "web", "empty"]},
        "ungrouped": {"hosts": ["lonely"]},
        "web": {"hosts": ["web01"]},
    }
    with pytest.raises(InventoryError, match="unknown host 'nope'"):
        ansible_host(inv, "nope")


def test_the_listing_shows_vars_as_set_not_checked(tmp_path):
    inv = load_inventory(write(tmp_path, "hosts.yml", "all:\n  hosts:\n    h: {ansible_port: abc, d: 2024-01-02}\n"))
    assert json.loads(ansible_json(ansible_host(inv, "h"))) == {"ansible_port": "abc", "d": "2024-01-02"}
