"""Documentation of tritonfleet.triton.rollback; the action plugin (plugins/action/rollback.py) does the work."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rollback
short_description: Switch the host back to a previous release and smoke-test it
description:
  - Runs tritonfleet's C(rollback) playbook on the host, as C(invoke rollback --host HOST) does. The previous
    release on the host's stack (or O(to)) becomes live again, the server restarts, every model must be READY and
    answer. Holds tritonfleet's host lock.
version_added: 0.1.0
author:
  - tritonfleet
options:
  to:
    description: The release id to go back to (as in RV(release_before)); without it, the one before the live one.
    type: str
extends_documentation_fragment:
  - tritonfleet.triton.engine
  - tritonfleet.triton.engine.models
attributes:
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Back to the previous release
  tritonfleet.triton.rollback:

- name: Back to a known release
  tritonfleet.triton.rollback:
    to: triton-2.51.0-d6c06e72d1c9+5c0a59d1f3c2
"""

RETURN = r"""
msg:
  description: How many steps changed, or the failed step and why.
  returned: always
  type: str
steps:
  description: The steps in order (task, module, status, msg, handler, seconds), as C(--json) reports them.
  returned: when the host was reached
  type: list
  elements: dict
release_before:
  description: The live release before the rollback.
  returned: when the host was reached
  type: str
release_after:
  description: The live release after it.
  returned: when the host was reached
  type: str
"""
