"""Bad inventories and vars: each refused before any host is touched, naming the file and line, the host and the
var, what was found and what is allowed; or, where Ansible accepts the input, read as Ansible reads it.

Most rows run what every task runs first (load_inventory, select, fleet.run.checked_host_vars), whose
TritonfleetError the CLI prints and exits 2 with; test_refused_end_to_end runs the real `invoke` for one row of
each kind. Every inventory is of its own: hosts on 127.0.0.1 at a port nothing listens on (labkit)."""

from __future__ import annotations

import textwrap
import time

import pytest

from labkit import closed_port, fault_log, invoke_here as invoke, local_inventory, show  # noqa: F401  (fixture)
from tritonfleet.engine.inventory import load_inventory
from tritonfleet.errors import TritonfleetError
from tritonfleet.fleet.run import checked_host_vars

AREA = "Bad input (inventory and vars)"


def write(tmp_path, text: str, files: dict | None = None):
    """hosts.yml with `text` and the given files (group_vars/..., host_vars/...) beside it."""
    for rel, content in (files or {}).items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(content)
    path = tmp_path / "hosts.yml"
    path.write_text(textwrap.dedent(text))
    return path


def checked(path, host: str | None = None) -> dict:
    """What every task does before it touches a host: read the inventory, pick hosts, check their vars."""
    return checked_host_vars(load_inventory(path).select(host=host))


def refusal(tmp_path, text: str, files: dict | None = None) -> TritonfleetError:
    path = write(tmp_path, text, files)
    with pytest.raises(TritonfleetError) as err:
        checked(path)
    return err.value


def shown(err, tmp_path) -> str:
    """The error as a user reads it, on one line, the test's folder left out."""
    return " ".join(line.strip() for line in str(err).splitlines()).replace(f"{tmp_path}/", "")


def two_hosts(bad_vars: str) -> str:
    """gpu07 is fine; gpu08 (line 4) has the bad vars: the check covers every host, not only the first."""
    return f"all:\n  hosts:\n    gpu07: {{ansible_port: 2222}}\n    gpu08: {{{bad_vars}}}\n"


# (bad vars of gpu08, what the error says, what it allows, the fault as the table names it)
HOST_VAR_ROWS = [
    ("ansible_port: abc", "ansible_port is 'abc': not a whole number", "a port number from 1 to 65535",
     "`ansible_port: \"abc\"` (a traceback from a worker thread, after another host was contacted)"),
    ("ansible_port: 70000", "ansible_port is 70000: out of range", "from 1 to 65535",
     "`ansible_port: 70000` (accepted)"),
    ("ansible_port: 22.9", "ansible_port is 22.9: not a whole number", "from 1 to 65535",
     "`ansible_port: 22.9` (accepted as 22)"),
    ("ansible_port: true", "ansible_port is True: a boolean, not a whole number", "from 1 to 65535",
     "`ansible_port: true` (accepted as 1)"),
    ("triton_http_port: abc", "triton_http_port is 'abc': not a whole number", "from 1 to 65535",
     "`triton_http_port: abc` (a traceback)"),
    ("triton_http_port: 99999", "triton_http_port is 99999: out of range", "from 1 to 65535",
     "`triton_http_port: 99999` (accepted)"),
    ("triton_log_verbose: high", "triton_log_verbose is 'high': not a whole number", "0 (off) or more",
     "`triton_log_verbose: high` (a traceback)"),
    ("triton_backend_config: {python: x}",
     "triton_backend_config is {'python': 'x'}: the settings of 'python' are text, not a mapping",
     "{python: {shm-default-byte-size: 16777216}}", "`triton_backend_config: {python: \"x\"}` (a traceback)"),
    ("triton_backend_config: [python]", "triton_backend_config is ['python']: a list, not a mapping",
     "a mapping of names to mappings", "`triton_backend_config: [python]` (a traceback)"),
    ("ansible_ssh_common_args: '-o \"UserKnownHostsFile=/x'",
     "ansible_ssh_common_args is '-o \"UserKnownHostsFile=/x': cannot be split into arguments as a shell would: "
     "No closing quotation", "quoted as for a shell",
     "`ansible_ssh_common_args: '-o \"UserKnownHostsFile=/x'` (`ValueError: No closing quotation`)"),
    ("triton_keep_releases: -1", "triton_keep_releases is -1: out of range", "1 (the live release) or more",
     "`triton_keep_releases: -1` (accepted)"),
    ("triton_ready_timeout: soon", "triton_ready_timeout is 'soon': not a whole number", "seconds, 1 or more",
     "`triton_ready_timeout: soon` (accepted)"),
    ("triton_model_repository_path: /", "triton_model_repository_path is '/': it is the root folder",
     "an absolute path (not /)", "`triton_model_repository_path: /` (accepted)"),
    ("triton_exit_on_error: maybe", "triton_exit_on_error is 'maybe'", "true/false, yes/no, on/off",
     "`triton_exit_on_error: maybe` (accepted as true: any non-empty text was)"),
    ("ansible_host: 10.10", "ansible_host is 10.1: a number, not text (quote the value",
     "a host name or IP address", "`ansible_host: 10.10` (YAML's 10.1, accepted as the address 10.1)"),
]


@pytest.mark.parametrize("bad_vars, says, allows, fault", HOST_VAR_ROWS, ids=[r[0] for r in HOST_VAR_ROWS])
def test_a_bad_host_var_is_refused_for_every_host_up_front(tmp_path, fault_log, bad_vars, says, allows, fault):
    err = refusal(tmp_path, two_hosts(bad_vars))
    assert (err.file, err.line) == (str(tmp_path / "hosts.yml"), 4), str(err)
    assert f"host gpu08: {says}" in str(err) and allows in err.hint, str(err)
    fault_log(AREA, fault, f"refused before any host is touched: {shown(err, tmp_path)}")


JINJA_ROWS = [
    ("ansible_user: '{{ 1/0 }}'", "var 'ansible_user': ZeroDivisionError: division by zero", "a traceback"),
    ("ansible_user: \"{{ 'a' + 1 }}\"", "var 'ansible_user': TypeError: can only concatenate str", "a traceback"),
    ("x: '{{ x }}'", "var 'x': recursive loop detected in template: x -> x", "expanded 32 times, no error"),
    ("x: '{{ y }}', y: 'a{{ z }}', z: '{{ x }}'", "var 'x': recursive loop detected in template: x -> y -> z -> x",
     "expanded until the passes ran out, no error"),
]


@pytest.mark.parametrize("bad_vars, says, before", JINJA_ROWS, ids=[r[0] for r in JINJA_ROWS])
def test_a_jinja_error_at_render_names_host_var_and_error(tmp_path, fault_log, bad_vars, says, before):
    err = refusal(tmp_path, two_hosts(bad_vars))
    assert err.line == 4 and f"host gpu08: {says}" in str(err), str(err)
    fault_log(AREA, f"`{bad_vars}` ({before})", f"refused before any host is touched: {shown(err, tmp_path)}")


def test_group_priority_that_is_not_a_number(tmp_path, fault_log):
    err = refusal(tmp_path, """\
        all:
          children:
            gpu:
              vars: {ansible_group_priority: high}
              hosts: {gpu08: }
        """)
    assert err.line == 4 and "group gpu: ansible_group_priority is 'high': not a whole number" in str(err)
    fault_log(AREA, "`ansible_group_priority: high` (a traceback)",
              f"refused when the inventory is read: {shown(err, tmp_path)}")


def test_a_group_that_is_its_own_descendant(tmp_path, fault_log):
    err = refusal(tmp_path, """\
        all:
          children:
            a:
              children:
                b:
            b:
              children:
                c:
                  children:
                    a:
        """)
    # read in Ansible's order (a child's own children first), the loop closes when c becomes b's child
    assert err.line == 8 and "adding group 'c' as a child of 'b' creates a recursive dependency loop" in str(err)
    fault_log(AREA, "a group that is its own child through another (`a > b`, `b > c > a`; accepted)",
              f"refused when the inventory is read: {shown(err, tmp_path)}")


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, fault_log):
    err = refusal(tmp_path, """\
        all:
          children:
            gpu:
              hosts: {gpu07: }
              vars: {triton_http_port: 9000}
              hosts: {gpu08: }
        """)
    assert err.line == 6 and "key 'hosts' is given twice in one mapping, at lines 4 and 6" in str(err)
    fault_log(AREA, "two `hosts:` keys in one group (the first block silently dropped)",
              f"refused when the inventory is read: {shown(err, tmp_path)}")


@pytest.mark.parametrize("hosts, line, says, before", [
    ("10.10: {}", 3, "host name 10.1 is not text: YAML read it as a number", "host `10.1`"),
    ("~: {}", 3, "host name None is not text: YAML read it as empty", "host `None`"),
    ("yes: {}\n    1: {}", 4, "keys True (line 3) and 1 (line 4) are one key once read", "one host `True`"),
])
def test_a_host_name_yaml_does_not_read_as_text(tmp_path, fault_log, hosts, line, says, before):
    err = refusal(tmp_path, f"all:\n  hosts:\n    {hosts}\n")
    assert err.line == line and says in str(err), str(err)
    fault_log(AREA, f"host key `{hosts.replace(chr(10) + '    ', ', ')}` (was: {before})",
              f"refused when the inventory is read, as Ansible refuses it: {shown(err, tmp_path)}")


def test_string_values_are_read_as_ansible_reads_them(tmp_path, fault_log):
    path = write(tmp_path, two_hosts("triton_exit_on_error: 'false', triton_extra_args: '--log-info=true "
                                     "--log-warning=true', ansible_become: 'no'"))
    hostvars = checked(path)["gpu08"]
    assert "--exit-on-error=false" in hostvars["triton_server_args"]
    assert hostvars["triton_server_args"][-2:] == ["--log-info=true", "--log-warning=true"]
    assert hostvars["ansible_become"] is False
    fault_log(AREA, "`triton_exit_on_error: \"false\"` (gave `--exit-on-error=true`), "
                    "`triton_extra_args: \"--log-info=true --log-warning=true\"` (each character became an "
                    "argument)",
              "read as Ansible reads them: `--exit-on-error=false`; the text split as a shell would, into "
              "`--log-info=true` and `--log-warning=true`")


def test_vars_folders_are_read_as_ansible_reads_them(tmp_path, fault_log):
    path = write(tmp_path, "all:\n  hosts:\n    gpu08: {}\n", {
        "group_vars/all/main": "triton_http_port: 9001\n",  # no extension: read
        "group_vars/all/ports/grpc.yaml": "triton_grpc_port: 9002\n",  # a subfolder: read
        "group_vars/all/.editor.yml": "triton_http_port: 1\n",  # hidden: skipped
        "group_vars/all/main.yml~": "triton_http_port: 2\n",  # a backup: skipped
        "group_vars/all/notes.txt": "not: [yaml\n",  # another extension: skipped
        "group_vars/all.yml": "triton_http_port: 3\n",  # the folder `all` is found first: skipped, as by Ansible
    })
    args = checked(path)["gpu08"]["triton_server_args"]
    assert "--http-port=9001" in args and "--grpc-port=9002" in args
    fault_log(AREA, "`group_vars/<group>/` with a file without extension, a hidden file, a backup (files "
                    "without extension were skipped and hidden files read)",
              "read as Ansible reads it: files without extension or .yml/.yaml/.json, subfolders too; hidden "
              "files, backups (`~`) and other extensions skipped; only the first of `all`, `all.yml`, "
              "`all.yaml`, `all.json`")


def test_a_host_range_is_read_as_ansible_reads_it(tmp_path, fault_log):
    path = write(tmp_path, "all:\n  hosts:\n    gpu[01:08]: {ansible_port: 2222}\n    gpu[09:16:7]:2200:\n")
    hostvars = checked(path)
    assert list(hostvars) == [f"gpu{i:02}" for i in range(1, 9)] + ["gpu09", "gpu16"]
    assert hostvars["gpu08"]["ansible_port"] == 2222 and hostvars["gpu16"]["ansible_port"] == 2200
    fault_log(AREA, "host key `gpu[01:08]` (was: refused, host ranges not supported)",
              "read as Ansible reads it: hosts gpu01 to gpu08; `[09:16:7]` every 7th, `host:port` the port")


def test_an_ini_inventory_is_read_as_ansible_reads_it(tmp_path, fault_log):
    path = tmp_path / "hosts.ini"
    path.write_text("gpu07 ansible_port=2222\n[lab]\ngpu08 ansible_port=\"2223\"\n[lab:vars]\ntriton_http_port=9000\n")
    hostvars = checked(path)
    assert (hostvars["gpu07"]["ansible_port"], hostvars["gpu08"]["ansible_port"]) == (2222, 2223)
    assert "--http-port=9000" in hostvars["gpu08"]["triton_server_args"]
    fault_log(AREA, "an INI inventory (was: refused, INI not supported)",
              "read as Ansible reads it: `[group]`, `[group:vars]`, `[group:children]`, host ranges, values typed "
              "as Ansible types them")


@pytest.mark.parametrize("what, text, files, says", [
    ("an inventory plugin config", "plugin: amazon.aws.aws_ec2\nregions: [us-east-1]\n", {},
     "this is an inventory plugin config (plugin: amazon.aws.aws_ec2), which is not read"),
])
def test_an_input_not_supported_yet_is_named_as_what_it_is(tmp_path, fault_log, what, text, files, says):
    err = refusal(tmp_path, text, files)
    assert says in str(err) and "YAML syntax error" not in str(err), str(err)
    fault_log(AREA, what,
              f"refused, named as what it is: {shown(err, tmp_path)}")


def test_an_inventory_directory_is_read_as_ansible_reads_it(tmp_path, fault_log):
    write(tmp_path / "inventory", "all:\n  hosts:\n    gpu07: {}\n", {
        "lab.ini": "[lab]\ngpu08\n", "README.md": "[skipped]\nnot-a-host\n",
        "group_vars/lab.yml": "triton_http_port: 9000\n"})
    hostvars = checked(tmp_path / "inventory")
    assert list(hostvars) == ["gpu07", "gpu08"]
    assert "--http-port=9000" in hostvars["gpu08"]["triton_server_args"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(TritonfleetError) as err:
        load_inventory(tmp_path / "empty")
    assert "this inventory directory holds no inventory file" in str(err.value)
    fault_log(AREA, "an inventory directory (was: refused, inventory directories not supported)",
              "read as Ansible reads it: its files sorted by name, subfolders too, hidden files, group_vars/, "
              f"host_vars/ and .md/.txt/~ files skipped; one with no inventory file: {shown(err.value, tmp_path)}")


def test_an_unknown_host_in_50000_is_found_in_linear_time(tmp_path, fault_log):
    path = tmp_path / "hosts.yml"
    path.write_text("all:\n  children:\n    gpu:\n      hosts:\n" + "".join(f"        h{i}:\n" for i in range(50_000)))
    started = time.monotonic()
    inv = load_inventory(path)
    with pytest.raises(TritonfleetError, match="unknown host 'nope'") as err:
        inv.select(host="nope")
    seconds = time.monotonic() - started
    print(f"50,000 hosts: inventory read and unknown host refused in {seconds:.2f} s")
    assert isinstance(inv.groups["gpu"].hosts, dict)  # membership is a dict lookup (it was a list: quadratic)
    assert "and 49980 more" in err.value.hint  # the hint names 20 hosts, not 50,000
    assert seconds < 20
    fault_log(AREA, "50,000 hosts in one group, `--host` naming an unknown one (84 s: a list membership test "
                    "per host)", f"refused in {seconds:.1f} s (reading the file is most of it); the hint names "
                                 "the first 20 hosts and how many more")


E2E_ROWS = [
    ("a bad var of the second host", lambda tmp_path: write(tmp_path, (
        f"all:\n  vars: {{ansible_host: 127.0.0.1, ansible_ssh_common_args: '-o UserKnownHostsFile={tmp_path}/kh'}}\n"
        f"  hosts:\n    gpu07: {{ansible_port: {closed_port()}}}\n    gpu08: {{ansible_port: abc}}\n")),
     "host gpu08: ansible_port is 'abc'"),
    ("a missing private key file", lambda tmp_path: local_inventory(
        tmp_path / "hosts.yml", ansible_ssh_private_key_file=str(tmp_path / "no-such-key")),
     "private key"),
    ("a bad var in an INI inventory", lambda tmp_path: write(tmp_path, "[lab]\ngpu08 ansible_host=127.0.0.1 "
                                                                       "ansible_port=abc\n"),
     "hosts.yml:2: host gpu08: ansible_port is 'abc'"),
    ("a Jinja2 runtime error", lambda tmp_path: local_inventory(tmp_path / "hosts.yml", ansible_user="{{ 1/0 }}"),
     "var 'ansible_user': ZeroDivisionError: division by zero"),
]


@pytest.mark.parametrize("what, make, says", E2E_ROWS, ids=[r[0] for r in E2E_ROWS])
def test_refused_end_to_end(tmp_path, fault_log, what, make, says):
    inv = make(tmp_path)
    proc = invoke("smoke", "--check", "--inventory", str(inv))
    assert proc.returncode == 2 and says in proc.stderr, show(proc)
    assert "Traceback" not in proc.stderr + proc.stdout and "UNREACHABLE" not in proc.stderr + proc.stdout
    first = proc.stderr.strip().splitlines()[0].replace(f"{tmp_path}/", "")
    fault_log(AREA, f"{what}, `invoke smoke --check`" + (
        " (was: UNREACHABLE per host, exit 1)" if "key" in what else ""),
        f"exit 2 before any host is touched: `{first}`")
