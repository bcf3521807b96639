"""Documentation of tritonfleet.triton.doctor; the action plugin (plugins/action/doctor.py) does the work."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: doctor
short_description: Diagnose every known Python-backend failure on the host; optionally apply the safe fixes
description:
  - As C(invoke doctor --host HOST [--fix]) does, checks the layout, the stub, numpy, shared memory, ports, disk,
    GPU driver, the unit and its journal, every model that is not READY, each finding with its evidence and fix.
  - With O(fix), the safe fixes are applied (packages, the stub's owner, a trailing slash, a restart) under
    tritonfleet's host lock and the host is checked again; in check mode they are reported, not applied.
  - The task fails while an error finding remains.
version_added: 0.1.0
author:
  - tritonfleet
options:
  fix:
    description: Apply the safe fixes, restart, check again.
    type: bool
    default: false
extends_documentation_fragment:
  - tritonfleet.triton.engine
attributes:
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Diagnose and repair what is safe to repair
  tritonfleet.triton.doctor:
    fix: true
"""

RETURN = r"""
diagnosis:
  description: The findings before any fix (host, reachable, ready, errors, findings with severity, title, evidence,
    fix, link, action).
  returned: when the host was reached
  type: dict
fixes:
  description: The fixes applied.
  returned: always
  type: list
  elements: str
after_fix:
  description: The findings after the fixes, as RV(diagnosis).
  returned: when fixes were applied
  type: dict
msg:
  description: Errors and warnings found, and whether the server is ready.
  returned: always
  type: str
"""
