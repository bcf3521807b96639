"""Documentation of tritonfleet.triton.smoke; the action plugin (plugins/action/smoke.py) does the work."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: smoke
short_description: Smoke-test the host's Triton server from the controller
description:
  - Runs tritonfleet's C(smoke) playbook on the host, as C(invoke smoke --host HOST) does. The server must be live and
    ready, every model READY and answer a real inference over HTTP and gRPC. Changes nothing.
version_added: 0.1.0
author:
  - tritonfleet
extends_documentation_fragment:
  - tritonfleet.triton.engine
  - tritonfleet.triton.engine.models
attributes:
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Every model answers
  tritonfleet.triton.smoke:
"""

RETURN = r"""
msg:
  description: C(0 step(s) changed) when every model answered, or the model that did not and why.
  returned: always
  type: str
steps:
  description: The smoke step, with per-model latencies in its C(data).
  returned: when the host was reached
  type: list
  elements: dict
counts:
  description: Steps by status.
  returned: when the host was reached
  type: dict
"""
