"""tritonfleet.triton.doctor: runs on the controller; options and results in plugins/modules/doctor.py."""

from __future__ import annotations

from ansible_collections.tritonfleet.triton.plugins.plugin_utils.engine_action import EngineAction


class ActionModule(EngineAction):
    ACTION = "doctor"
