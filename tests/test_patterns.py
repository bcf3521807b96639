"""Ansible's host patterns (`--limit`), read as ansible-core's InventoryManager reads them. The expected results
below are what `ansible -i INVENTORY PATTERN --list-hosts` printed for the same inventory (ansible-core 2.19);
test_same_hosts_as_ansible checks them against the installed ansible-core."""

from __future__ import annotations

import pytest

from labkit import fault_log  # noqa: F401  (fixture)
from tritonfleet.engine import patterns
from tritonfleet.engine.inventory import load_inventory
from tritonfleet.engine.patterns import PatternError

AREA = "Bad input (control machine)"

# gpu11 sits in rack_a (through its child `fast`) and rack_b; gpu02 in rack_a and fast: the order Ansible gives a
# group's hosts (its own, then its children's) differs from the order hosts first appear in the file.
INVENTORY = """\
all:
  hosts:
    loner: {}
  children:
    rack_a:
      hosts:
        gpu01: {}
        gpu02: {}
        gpu03: {}
      children:
        fast:
          hosts:
            gpu11: {}
    rack_b:
      hosts:
        gpu04: {}
        gpu11: {}
        web1.example.com: {}
    fast:
      hosts:
        gpu02: {}
"""
EVERY_HOST = ["loner", "gpu01", "gpu02", "gpu03", "gpu04", "gpu11", "web1.example.com"]

CASES = [
    ("all", EVERY_HOST),
    ("*", EVERY_HOST),
    ("al*", EVERY_HOST),
    ("ungrouped", ["loner"]),
    ("gpu0*", ["gpu01", "gpu02", "gpu03", "gpu04"]),
    ("rack_a:!gpu02", ["gpu01", "gpu03", "gpu11"]),
    ("rack_a:&fast", ["gpu02", "gpu11"]),
    ("&fast", ["gpu02", "gpu11"]),
    ("!gpu01", ["loner", "gpu02", "gpu03", "gpu04", "gpu11", "web1.example.com"]),
    ("rack_a:rack_b:!fast:&rack_b", ["gpu04", "web1.example.com"]),
    ("~gpu0[13]", ["gpu01", "gpu03"]),
    ("~web", ["web1.example.com"]),
    ("*.example.com", ["web1.example.com"]),
    ("rack_?", ["gpu01", "gpu02", "gpu03", "gpu11", "gpu04", "web1.example.com"]),
    ("fast", ["gpu11", "gpu02"]),
    ("fast[0]", ["gpu11"]),
    ("rack_a[0:2]", ["gpu01", "gpu02", "gpu03"]),
    ("rack_a[1:]", ["gpu02", "gpu03", "gpu11"]),
    ("rack_a[-1]", ["gpu11"]),
    ("rack_a[0-1]", ["gpu01", "gpu02"]),
    ("rack_a[9:]", []),
    ("rack*[0]", ["gpu01"]),
    ("gpu04:rack_a[0]", ["gpu04", "gpu01"]),
    ("gpu11,gpu01,gpu11", ["gpu11", "gpu01"]),
    ("nope,gpu01", ["gpu01"]),
    ("gpu04:22", []),
]


@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "hosts.yml"
    path.write_text(INVENTORY)
    return load_inventory(path)


@pytest.mark.parametrize("pattern, hosts", CASES, ids=[c[0] for c in CASES])
def test_a_pattern_selects_what_ansible_selects(inventory, pattern, hosts):
    assert patterns.match(pattern, inventory) == hosts


@pytest.mark.parametrize("pattern, items", [
    ("rack_a:!gpu02", ["rack_a", "!gpu02"]),
    ("a, b ,,c", ["a", "b", "c"]),
    ("group[0:3]", ["group[0:3]"]),
    ("web[1:3]:&fast", ["web[1:3]", "&fast"]),
    ("fe80::1", ["fe80::1"]),  # an address, not three items
    ("gpu01:22", ["gpu01:22"]),  # host:port, as Ansible's parse_address reads it
])
def test_a_pattern_splits_as_ansible_splits_it(pattern, items):
    assert patterns.split_pattern(pattern) == items


def test_a_pattern_item_that_matches_nothing_is_ignored_with_a_warning(inventory):
    warnings = []
    assert patterns.match("nope:gpu01", inventory, warn=warnings.append) == ["gpu01"]
    assert warnings == ["could not match supplied host pattern, ignoring: nope"]


def test_a_limit_file_is_read_one_host_a_line(inventory, tmp_path):
    (tmp_path / "retry").write_text("gpu03\n\n gpu01 \n")
    assert patterns.match(f"@{tmp_path / 'retry'},loner", inventory) == ["gpu03", "gpu01", "loner"]


@pytest.mark.parametrize("pattern, message", [
    ("~gpu(", "invalid host pattern '~gpu(': missing ), unterminated subpattern"),
    ("rack_a[9]", "no hosts matched the subscripted pattern 'rack_a[9]': 'rack_a' matches 4 host(s)"),
    ("@/no/such/file", "cannot read the limit file: No such file or directory"),
])
def test_a_bad_pattern_is_refused(inventory, fault_log, pattern, message):
    with pytest.raises(PatternError) as err:
        patterns.match(pattern, inventory)
    assert message in str(err.value)
    fault_log(AREA, f"`--limit '{pattern}'`", f"refused before any host is touched (exit 2): `{err.value.message}`")


@pytest.mark.ansible
def test_same_hosts_as_ansible(inventory, tmp_path):
    """The whole table against the installed ansible-core's InventoryManager, on the same inventory file."""
    manager = pytest.importorskip("ansible.inventory.manager")
    dataloader = pytest.importorskip("ansible.parsing.dataloader")
    ansible = manager.InventoryManager(loader=dataloader.DataLoader(), sources=[str(tmp_path / "hosts.yml")])
    for pattern, hosts in CASES:
        assert [h.name for h in ansible.get_hosts(pattern)] == hosts, pattern


@pytest.mark.parametrize("pattern", ["~[", "gpu]", "rack_a:gpu[0"])
def test_an_unclosed_bracket_is_refused_not_dropped(pattern):
    """Ansible drops the stray bracket and `~[` selects every host: a limit must never widen the run."""
    with pytest.raises(patterns.PatternError, match="unclosed or stray bracket"):
        patterns.split_pattern(pattern)
