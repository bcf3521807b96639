"""Documentation of tritonfleet.triton.status; the action plugin (plugins/action/status.py) does the work."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: status
short_description: What the host runs, and where it drifts from its vars
description:
  - As C(invoke status --host HOST), the host's release, Triton version, service state, uptime, restarts and model
    states, and its drift (a release that is not the one the vars ask for, a service that is not active, models
    not READY). Changes nothing; drift fails the task only with O(fail_on_drift).
version_added: 0.1.0
author:
  - tritonfleet
options:
  fail_on_drift:
    description: Fail the task when the host drifts, as C(invoke status) exits 1.
    type: bool
    default: false
extends_documentation_fragment:
  - tritonfleet.triton.engine
  - tritonfleet.triton.engine.models
attributes:
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Drift report
  tritonfleet.triton.status:
  register: triton

- name: Hosts not on the release the inventory asks for
  ansible.builtin.debug:
    var: triton.drift
  when: triton.drift
"""

RETURN = r"""
status:
  description: The host's state.
  returned: always
  type: dict
  contains:
    release: {description: The live release id., type: str}
    triton_version: {description: The server's version., type: str}
    service: {description: The unit's ActiveState., type: str}
    uptime_s: {description: Seconds since the service started., type: int}
    restarts: {description: systemd's NRestarts., type: int}
    models: {description: Model name to state (READY, UNAVAILABLE with its reason)., type: dict}
drift:
  description: Where the host differs from its vars; empty when it does not.
  returned: always
  type: list
  elements: str
msg:
  description: The drift in one line, C(no drift), or why the host could not be read.
  returned: always
  type: str
"""
