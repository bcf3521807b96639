"""Host patterns as Ansible reads them in inventories: `gpu[01:16]`, `node[a:f]`, `gpu[01:16:2]`, several ranges
in one name, `host:port` and `[address]:port`.

The same names and ports as ansible-core's parse_address and expand_hostname_range. Where Ansible yields no host
without a word (`[5:1]`, a negative step) or fails with a Python error (`[1:x]`, a step of 0, `[01:100]`), the
pattern is refused saying what is wrong, and so is a range of more than MAX_HOSTS hosts (a typo, not a fleet).
"""

from __future__ import annotations

import ipaddress
import re
import string

MAX_HOSTS = 100_000
_RANGE = r"\[(?:[a-z]:[a-z]|[0-9]+:[0-9]+)(?::[0-9]+)?\]"
_LABEL = rf"(?:\w|{_RANGE})(?:[\w-]|{_RANGE})*(?<![_-])"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.IGNORECASE)
_BRACKETED_PORT = re.compile(r"\[(.+)\]:([0-9]+)")
_HOST_PORT = re.compile(r"((?:[^:\[\]]|\[[^\]]*\])*):([0-9]+)")
_NUMBER = re.compile(r"[0-9]+")


def expand(pattern: str) -> tuple[list[str], int | None]:
    """The host names a pattern stands for, and the port it gives (None when it gives none). Raises ValueError
    saying what is wrong with a range."""
    address, port = split_port(pattern)
    if address is None:  # not an address Ansible recognizes: the whole pattern is the name, as in Ansible
        address, port = pattern, None
    names = _expand_ranges(address) if "[" in address else [address]
    if len(names) > MAX_HOSTS:
        raise ValueError(f"it stands for {len(names)} hosts, more than {MAX_HOSTS}")
    return names, port


def split_port(pattern: str) -> tuple[str | None, int | None]:
    """(address, port) as Ansible's parse_address splits them; address None when it is not a host name or address."""
    address, port = pattern, None
    for form in (_BRACKETED_PORT, _HOST_PORT):
        match = form.fullmatch(address)
        if match:
            address, port = match.group(1), int(match.group(2))
    return (address, port) if _HOSTNAME.fullmatch(address) or _is_ipv6(address) else (None, None)


def _is_ipv6(address: str) -> bool:
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return False
    return "%" not in address  # a scope (%eth0) is not in Ansible's pattern


def _expand_ranges(pattern: str) -> list[str]:
    """Expand the first `[begin:end(:step)]`, then the ranges left in each name."""
    head, _, rest = pattern.partition("[")
    body, closed, tail = rest.partition("]")
    if not closed:
        raise ValueError("'[' is not closed by ']'")
    names = [f"{head}{item}{tail}" for item in _range_items(body)]
    return [n for name in names for n in (_expand_ranges(name) if "[" in name else [name])]


def _range_items(body: str) -> list[str]:
    bounds = body.split(":")
    if len(bounds) not in (2, 3):
        raise ValueError(f"[{body}] is not a range: write [begin:end] or [begin:end:step]")
    begin, end = bounds[0] or "0", bounds[1]
    step = bounds[2] if len(bounds) == 3 else "1"
    if not end:
        raise ValueError(f"range [{body}] has no end")
    if not _NUMBER.fullmatch(step) or int(step) < 1:
        raise ValueError(f"range [{body}] has step {step!r}: the step must be a whole number, 1 or more")
    if len(begin) == len(end) == 1 and begin in string.ascii_letters and end in string.ascii_letters:
        first, last = string.ascii_letters.index(begin), string.ascii_letters.index(end)
        if first > last:
            raise ValueError(f"range [{body}] begins after it ends")
        return list(string.ascii_letters[first:last + 1:int(step)])
    if not (_NUMBER.fullmatch(begin) and _NUMBER.fullmatch(end)):
        raise ValueError(f"range [{body}] must go from a number to a number, or from a letter to a letter")
    if int(begin) > int(end):
        raise ValueError(f"range [{body}] begins after it ends")
    width = len(begin) if begin.startswith("0") and len(begin) > 1 else 0
    if width and len(end) != width:
        raise ValueError(f"range [{body}]: a begin with leading zeros needs an end of the same length "
                         f"(e.g. [{begin}:{'9' * width}])")
    if (int(end) - int(begin)) // int(step) >= MAX_HOSTS:
        raise ValueError(f"range [{body}] stands for more than {MAX_HOSTS} hosts")
    return [str(n).zfill(width) for n in range(int(begin), int(end) + 1, int(step))]
