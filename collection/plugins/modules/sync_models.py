"""Documentation of tritonfleet.triton.sync_models; the action plugin (plugins/action/sync_models.py) does the work."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: sync_models
short_description: Validate the model repository on the controller and sync it to the host
description:
  - Runs tritonfleet's C(sync-models) playbook on the host, as C(invoke sync-models --host HOST) does. The
    repository is validated on the controller, staged beside the live one as an rsync delta and switched to
    atomically; with C(triton_model_control_mode=explicit) only the changed models are loaded, without a restart.
  - Holds tritonfleet's host lock while it runs.
version_added: 0.1.0
author:
  - tritonfleet
extends_documentation_fragment:
  - tritonfleet.triton.engine
  - tritonfleet.triton.engine.models
  - tritonfleet.triton.engine.tags
attributes:
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: New models on every host, two at a time
  hosts: gpu
  gather_facts: false
  serial: 2
  max_fail_percentage: 0
  tasks:
    - name: Model repository synced
      tritonfleet.triton.sync_models:
        models: models/  # the playbook's folder, or its files/
"""

RETURN = r"""
msg:
  description: How many steps changed, or the failed step and why.
  returned: always
  type: str
steps:
  description: The steps in order (task, module, status, msg, handler, seconds, diff), as C(--json) reports them.
  returned: when the host was reached
  type: list
  elements: dict
counts:
  description: Steps by status.
  returned: when the host was reached
  type: dict
release_before:
  description: The host's live release before the run.
  returned: when the host was reached
  type: str
release_after:
  description: The host's live release after the run.
  returned: when the host was reached
  type: str
bytes_sent:
  description: Bytes sent to the host.
  returned: when the host was reached
  type: int
"""
