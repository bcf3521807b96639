"""Writes each task's wall time per host to $TASK_TIMES_FILE (JSON lines), for bench/compare.py."""

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._start = {}
        self._out = os.environ.get("TASK_TIMES_FILE")

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._start[task._uuid] = time.monotonic()

    v2_playbook_on_handler_task_start = v2_playbook_on_task_start

    def _record(self, result):
        if not self._out:
            return
        started = self._start.get(result._task._uuid, time.monotonic())
        with open(self._out, "a") as fh:
            fh.write(json.dumps({"task": result._task.get_name(), "action": result._task.action,
                                 "host": result._host.get_name(),
                                 "seconds": time.monotonic() - started}) + "\n")

    v2_runner_on_ok = v2_runner_on_failed = v2_runner_on_skipped = _record
