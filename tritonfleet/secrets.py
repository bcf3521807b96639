"""Which inventory vars are secret, and the one registry of secret values every output is redacted with.

Convention: a var is secret when it is named in the var `tritonfleet_secret_vars` (a list, or a
comma-separated string), or when its name ends in `_password`, `_passphrase`, `_token`, `_secret` or
`_api_key` (so `ansible_become_password` is). The become password read from the environment
(`tritonfleet_become_password_env`) is registered too. Values shorter than MIN_LENGTH characters are not
redacted (replacing every "1" or "ab" in the output would hide everything else); don't use such secrets.
"""

from __future__ import annotations

import threading

SECRET_SUFFIXES = ("_password", "_passphrase", "_token", "_secret", "_api_key")
MIN_LENGTH = 4
REDACTED = "********"

_lock = threading.Lock()
_values: set[str] = set()


def secret_var_names(hostvars: dict) -> set[str]:
    listed = hostvars.get("tritonfleet_secret_vars") or []
    if isinstance(listed, str):
        listed = [n.strip() for n in listed.split(",")]
    names = {str(n) for n in listed if n}
    names |= {k for k in hostvars if isinstance(k, str) and k.lower().endswith(SECRET_SUFFIXES)}
    return names


def _flatten(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _flatten(v)
    elif isinstance(value, (list, tuple, set)):
        for v in value:
            yield from _flatten(v)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


def secret_values(hostvars: dict) -> set[str]:
    """The values of a host's secret vars (strings inside lists/dicts included)."""
    return {v for name in secret_var_names(hostvars) if name in hostvars for v in _flatten(hostvars[name])}


def register(values) -> None:
    with _lock:
        _values.update(v for v in values if isinstance(v, str) and len(v) >= MIN_LENGTH)


def registered() -> list[str]:
    with _lock:
        return sorted(_values, key=len, reverse=True)  # longest first: a secret inside another
