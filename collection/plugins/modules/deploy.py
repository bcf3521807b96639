"""Documentation of tritonfleet.triton.deploy; the action plugin (plugins/action/deploy.py) does the work."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: deploy
short_description: Deploy Triton Inference Server with its Python backend, rolled back if its health gate fails
description:
  - Runs tritonfleet's C(deploy) playbook on the host, as C(invoke deploy --host HOST) does (provision, sync
    models, start, smoke test), holding tritonfleet's host lock, so an AWX job and a person's C(invoke deploy)
    never work on one host at once (the second fails at once, naming the holder).
  - When the deploy fails after it changed the host (a model that does not load, a failed smoke test), the host is
    switched back to the release it had and must pass the smoke test there, as C(invoke rollout) does; the task
    fails either way, so C(serial) and C(max_fail_percentage) stop the play before the next batch.
  - In check mode nothing changes and nothing is rolled back; steps say what they would change.
version_added: 0.1.0
author:
  - tritonfleet
options:
  rollback:
    description: Roll a host whose deploy failed after a change back to the release it had (ignored in check mode).
    type: bool
    default: true
extends_documentation_fragment:
  - tritonfleet.triton.engine
  - tritonfleet.triton.engine.models
  - tritonfleet.triton.engine.tags
attributes:
  diff_mode:
    support: full
    details: The diff of each file a step changes (or would change), such as the systemd unit.
"""

EXAMPLES = r"""
- name: Roll Triton out two hosts at a time; any failed host stops the play after its batch
  hosts: gpu
  gather_facts: false
  serial: 2
  max_fail_percentage: 0
  tasks:
    - name: Triton serving the model repository
      tritonfleet.triton.deploy:
        models: /srv/models/production
      register: deployed

    - name: What changed
      ansible.builtin.debug:
        msg: "{{ deployed.steps | selectattr('status', 'eq', 'changed') | map(attribute='task') | list }}"
"""

RETURN = r"""
msg:
  description: How many steps changed; on failure, the failed step and why (with the rollback's outcome).
  returned: always
  type: str
  sample: "rolled back to triton-2.51.0-d6c06e72d1c9+5c0a59d1f3c2: Every model ready: str_upper UNAVAILABLE ..."
steps:
  description: The deploy's steps in order, each as C(invoke deploy --json) reports it.
  returned: when the host was reached
  type: list
  elements: dict
  contains:
    task: {description: The step's name., type: str}
    module: {description: The engine module it ran., type: str}
    status: {description: ok, changed, failed or skipped., type: str}
    msg: {description: What it did or why it failed., type: str}
    handler: {description: Whether it ran as a handler., type: bool}
    seconds: {description: How long it took., type: float}
    diff: {description: The unified diff of the file it changed, when there is one., type: str}
  sample: [{"task": "Triton release unpacked beside the live one", "module": "triton_release",
            "status": "changed", "msg": "installed triton-2.51.0-d6c06e72d1c9", "handler": false, "seconds": 2.1}]
counts:
  description: Steps by status.
  returned: when the host was reached
  type: dict
  sample: {"ok": 14, "changed": 0, "failed": 0, "skipped": 2}
release_before:
  description: The host's live release before the run (empty on a fresh host).
  returned: when the host was reached
  type: str
release_after:
  description: The host's live release after the run (after the rollback, if there was one).
  returned: when the host was reached
  type: str
bytes_sent:
  description: Bytes the steps sent to the host (release and models).
  returned: when the host was reached
  type: int
rolled_back:
  description: Whether the failed host is back on the release it had and passed its smoke test there.
  returned: when a failed deploy was rolled back
  type: bool
rollback_steps:
  description: The rollback's steps, as O(steps).
  returned: when a failed deploy was rolled back
  type: list
  elements: dict
"""
