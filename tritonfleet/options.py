"""The tasks' command-line options, parsed and checked in one place, before any file is read or host touched.

tasks.py hands each task's options over as Invoke gave them (text, or None when not given); `parse_options`
fills in what the `tritonfleet:` section of Invoke's configuration sets and refuses what cannot be meant: an
empty `--host` or `--inventory` (an unset shell variable) that would otherwise mean "every host" or "the
default file", a count that is not one. A refusal is a TritonfleetError: exit 2, nothing touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

from tritonfleet.engine.inventory import DEFAULT_INVENTORY
from tritonfleet.errors import TritonfleetError
from tritonfleet.paths import REPO_ROOT

CONFIG_DEFAULTS = {"inventory": str(DEFAULT_INVENTORY), "forks": "10", "bundle": None}
"""The `tritonfleet:` section of Invoke's configuration: what a task uses when its option is not given. A
project sets its own in an invoke.yaml beside tasks.py, as it would in ansible.cfg; ~/.invoke.yaml,
/etc/invoke.yaml, `invoke -f FILE` and INVOKE_TRITONFLEET_INVENTORY (_FORKS, _BUNDLE) work too. forks is
text, as on the command line: Invoke casts an environment variable to the default's type, and would
answer INVOKE_TRITONFLEET_FORKS=abc with a traceback instead of a clear error."""

CONFIG_KEYS = {"inventory": "inventory", "forks": "forks", "bundle": "bundle", "source": "bundle"}
"""Options whose default comes from the configuration, and the key there (`bundle --source` is the bundle)."""

PATHS = ("inventory", "bundle", "source")
"""Options naming a file: from the configuration, a relative one is relative to the project folder."""


@dataclass(frozen=True)
class Count:
    """`--batch` or `--max-fail`: N hosts, or P% of the hosts in the run."""

    number: int
    percent: bool = False

    def of(self, total: int, *, at_least: int = 0) -> int:
        """The number of hosts, as Ansible's pct_to_int (lib/ansible/utils/helpers.py) reads `serial`: P% of
        `total` rounded down, but at least `at_least` (Ansible's min_value); N is N. Integer arithmetic, so
        29% of 100 is 29 (Ansible's float product gives 28)."""
        if not self.percent:
            return self.number
        return total * self.number // 100 or at_least


@dataclass(frozen=True)
class Options:
    """A task's options, parsed and checked. An option not given, or one a task does not take, keeps its
    default here."""

    inventory: str = str(DEFAULT_INVENTORY)
    host: str | None = None
    group: str | None = None
    models: str | None = None
    bundle: str | None = None
    source: str | None = None  # `bundle --source`
    forks: int = 10
    check: bool = False
    fix: bool = False
    json: bool = False
    verbose: bool = False
    canary: int = 1
    batch: Count = Count(25, percent=True)
    max_fail: Count = Count(0)
    hosts: int = 2  # `lab.up --hosts`: how many lab hosts

    @property
    def extra_vars(self) -> dict:
        """The vars the command line sets (highest precedence): `--models` is the var model_repository."""
        return {"model_repository": self.models} if self.models else {}

    def batch_size(self, total: int) -> int:
        """Hosts per batch after the canary, as Ansible sizes `serial: [canary, batch]`: a percentage is of all
        `total` hosts (the canary included), rounded down but at least 1. 0 stays 0, which rollout() reads
        as Ansible reads `serial: 0`: one batch of all the rest."""
        return self.batch.of(total, at_least=1)

    def failures_allowed(self, total: int) -> int:
        """Failed or unreachable hosts tolerated; one more stops the rollout. A percentage of all `total`
        hosts rounds down, so `--max-fail 10%` of 5 hosts tolerates none."""
        return self.max_fail.of(total)


def parse_options(config, **given) -> Options:
    """The task's options as given on the command line, or else from the `tritonfleet` configuration, checked.
    A relative path from the configuration is relative to the project folder (where tasks.py and invoke.yaml
    are), as ansible.cfg's are relative to its own folder; one on the command line, to the current folder."""
    values = {}
    for name, value in given.items():
        label = "--" + name.replace("_", "-")
        if value is None and name in CONFIG_KEYS:
            values[name] = _configured(config, name, label)
        elif value is not None:
            values[name] = PARSERS.get(name, _as_given)(value, label)
    if values.get("host") is not None and values.get("group") is not None:
        raise TritonfleetError("give --host or --group, not both")
    return Options(**values)


def _configured(config, name: str, label: str):
    """The option's value from the configuration, checked as the option is; an error says where it came from."""
    key = CONFIG_KEYS[name]
    value = config.tritonfleet[key]
    if value is None:
        return None
    if name in PATHS and str(value).strip():
        value = str(REPO_ROOT / str(value))
    try:
        return PARSERS[name](value, label)
    except TritonfleetError as exc:
        raise TritonfleetError(f"{exc.message} (from tritonfleet.{key} in Invoke's configuration)",
                               hint=exc.hint) from None


def _as_given(value, label: str):
    return value


def _text(value, label: str) -> str:
    """A name or path: empty is refused, never read as "not given" (`--host "$HOSTS"` with HOSTS unset
    would otherwise deploy to every host)."""
    if not str(value).strip():
        raise TritonfleetError(f"{label} is empty", hint="give it a value, or leave it out")
    return str(value)


def _whole_number(value, label: str, minimum: int) -> int:
    """Digits only: int() would also take '+5', ' 5' and '1_0'."""
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]+", text):
        raise TritonfleetError(f"{label} must be a whole number, got {value!r}")
    if int(text) < minimum:
        raise TritonfleetError(f"{label} must be at least {minimum}, got {int(text)}")
    return int(text)


def _count(value, label: str) -> Count:
    """`N` or `P%`, whole numbers as Ansible's `serial` takes them, P at most 100."""
    text = str(value).strip()
    match = re.fullmatch(r"([0-9]+)(%?)", text)
    if not match or (match[2] and int(match[1]) > 100):
        raise TritonfleetError(f"{label} must be a number of hosts N or a percentage P% (0% to 100%), got {value!r}",
                               hint=f"use e.g. {label} 2 or {label} 25%")
    return Count(int(match[1]), percent=bool(match[2]))


PARSERS = {
    "host": _text, "group": _text, "models": _text, "inventory": _text, "bundle": _text, "source": _text,
    "forks": partial(_whole_number, minimum=1), "hosts": partial(_whole_number, minimum=1),
    "canary": partial(_whole_number, minimum=0),
    "batch": _count, "max_fail": _count,
}
