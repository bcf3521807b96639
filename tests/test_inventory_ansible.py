"""Differential tests: for each inventory of tests/fixtures/inventories/ (and the repository's own), tritonfleet's
groups and host vars are what `ansible-inventory --list` and `--host NAME` print, exactly (marker `ansible`).

Each case is a folder; its sources.txt names the `--inventory` sources, one a line, relative to the folder (a
line with a comma is a host list, as given). ansible-inventory runs from an empty folder with an empty config, so
nothing around the checkout changes what it reads; every run is started at once, in parallel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tritonfleet.engine.inventory import DEFAULT_INVENTORY, ansible_host, ansible_json, ansible_list, load_inventory
from tritonfleet.paths import REPO_ROOT

pytestmark = [
    pytest.mark.ansible,
    pytest.mark.skipif(shutil.which("ansible-inventory") is None,
                       reason="ansible-inventory is not installed (pip install -e '.[test]' installs ansible-core)"),
]

FIXTURES = Path(__file__).parent / "fixtures" / "inventories"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "sources.txt").is_file())
REPOSITORY = "repository-inventory"
# `--host` prints what `--list` prints under _meta.hostvars (the same call in ansible-core): a few cases suffice
HOST_CASES = ["03-ini-types", "10-vars-files", "16-multiple-sources", "18-script-host-calls"]


def sources_of(case: str) -> list[str]:
    if case == REPOSITORY:
        return [str(DEFAULT_INVENTORY)]
    lines = (FIXTURES / case / "sources.txt").read_text().splitlines()
    return [line.strip() if "," in line else str(FIXTURES / case / line.strip()) for line in lines if line.strip()]


def first_host(case: str) -> str:
    return load_inventory(sources_of(case)).host_names[0]


@pytest.fixture(scope="module")
def ansible_outputs(tmp_path_factory) -> dict:
    """(case, what) -> ansible-inventory's output as JSON: `--list` of every case, `--host FIRST_HOST` of HOST_CASES."""
    workdir = tmp_path_factory.mktemp("ansible")
    (workdir / "ansible.cfg").touch()
    env = {**os.environ, "ANSIBLE_CONFIG": str(workdir / "ansible.cfg"), "ANSIBLE_HOME": str(workdir),
           "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true", "ANSIBLE_DEPRECATION_WARNINGS": "false"}

    def run(job):
        case, args = job
        command = ["ansible-inventory", *(a for s in sources_of(case) for a in ("-i", s)), *args]
        proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{' '.join(command)}\n{proc.stderr}"
        return json.loads(proc.stdout)

    jobs = [(case, ["--list"]) for case in [*CASES, REPOSITORY]] + \
        [(case, ["--host", first_host(case)]) for case in HOST_CASES]
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 4)) as pool:
        results = list(pool.map(run, jobs))
    return {(case, args[0]): result for (case, args), result in zip(jobs, results)}


def without_profile(listing: dict) -> dict:
    """The listing without `_meta.profile`, which ansible-core prints from 2.19 on."""
    listing["_meta"].pop("profile", None)
    return listing


def test_the_corpus_covers_every_kind_of_source():
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", [*CASES, REPOSITORY])
def test_groups_and_hostvars_are_what_ansible_inventory_lists(case, ansible_outputs):
    ours = without_profile(json.loads(ansible_json(ansible_list(load_inventory(sources_of(case))))))
    theirs = without_profile(ansible_outputs[(case, "--list")])
    assert {k: v for k, v in ours.items() if k != "_meta"} == {k: v for k, v in theirs.items() if k != "_meta"}
    for host in sorted(set(ours["_meta"]["hostvars"]) | set(theirs["_meta"]["hostvars"])):
        assert ours["_meta"]["hostvars"].get(host) == theirs["_meta"]["hostvars"].get(host), host


@pytest.mark.parametrize("case", HOST_CASES)
def test_a_host_is_what_ansible_inventory_host_prints(case, ansible_outputs):
    inventory = load_inventory(sources_of(case))
    ours = json.loads(ansible_json(ansible_host(inventory, inventory.host_names[0])))
    assert ours == ansible_outputs[(case, "--host")]


def test_invoke_inventory_list_prints_what_ansible_inventory_prints(ansible_outputs):
    """The command a user types, on the repository's inventory and on several sources at once."""
    for case in (REPOSITORY, "16-multiple-sources"):
        sources = sources_of(case)
        proc = subprocess.run(["invoke", "inventory", "--list", *(a for s in sources for a in ("--inventory", s))],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr
        assert without_profile(json.loads(proc.stdout)) == without_profile(ansible_outputs[(case, "--list")]), case
