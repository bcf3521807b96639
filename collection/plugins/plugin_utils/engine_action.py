"""The one action plugin behind every tritonfleet.triton module: it runs on the controller and hands the play's host
to tritonfleet's engine (tritonfleet.fleet.ansible), which opens its own SSH connection to it.

Ansible never connects to the host for these tasks: nothing here calls `_execute_module` or
`_low_level_execute_command`, so the play's connection plugin (ssh by default) is only read for the settings it
resolved (`-u`, `--private-key`, ansible.cfg, inventory vars, an AWX machine credential). Ansible's forks give the
parallelism: each call is ONE host, and `serial` / `max_fail_percentage` decide the batches from the results.
"""

from __future__ import annotations

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

try:
    from ansible.parsing.vault import VaultHelper
except ImportError:  # ansible-core before 2.19: vaulted values are AnsibleVaultEncryptedUnicode
    VaultHelper = None

try:
    from tritonfleet.fleet import ansible as engine
except ImportError as exc:  # reported when a task runs, naming the fix, not when Ansible loads the plugin
    engine = None
    IMPORT_ERROR = exc

display = Display()

# The ssh connection plugin's option behind each connection var the engine takes (tritonfleet.fleet.ansible).
SSH_OPTIONS = {"ansible_host": "host", "ansible_port": "port", "ansible_user": "remote_user",
               "ansible_ssh_private_key_file": "private_key_file", "ansible_ssh_common_args": "ssh_common_args",
               "ansible_ssh_extra_args": "ssh_extra_args"}


class EngineAction(ActionBase):
    """Subclasses name their action (ACTION); options, checks and results are the engine adapter's."""

    ACTION = ""
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        super().run(tmp, task_vars)
        if engine is None:
            raise AnsibleActionFail(f"tritonfleet is not importable on the controller ({IMPORT_ERROR}): install it "
                                    "into the Python that runs ansible-playbook (for AWX, the execution "
                                    "environment's): pip install -e /path/to/tritonfleet (a checkout)")
        _, args = self.validate_argument_spec(engine.argument_spec(self.ACTION))
        args = {**args, **{name: self._local_path(args[name]) for name in engine.PATH_OPTIONS if args.get(name)}}
        name = task_vars["inventory_hostname"]
        mode = engine.Mode(check=bool(self._task.check_mode), diff=bool(self._task.diff),
                           log=lambda line: display.vv(line, host=name))
        return engine.run_on_host(self.ACTION, lambda: self._engine_host(name, task_vars), args, mode)

    def _engine_host(self, name, task_vars):
        return engine.engine_host(name, task_vars, lambda var: self._templar.template(task_vars[var]),
                                  self._connection_settings(task_vars), groups=task_vars.get("group_names", ()),
                                  vaulted=[var for var, value in task_vars.items() if vaulted(value)])

    def _connection_settings(self, task_vars):
        """What Ansible resolved for the host's connection; a var the connection plugin has no option for (the
        local connection has no host or user) is read from the host's vars."""
        settings = {}
        for var, option in SSH_OPTIONS.items():
            value = self.get_connection_option(option)
            if value is None and var in task_vars:
                value = self._templar.template(task_vars[var])
            settings[var] = value
        become = self._connection.become
        settings["ansible_become"] = become is not None
        if become is not None:
            settings["ansible_become_user"] = self.get_become_option("become_user")
            settings["ansible_become_password"] = self.get_become_option("become_pass")
        return engine.Connection(settings, become_method=getattr(become, "name", None),
                                 password=bool(self.get_connection_option("password")))

    def _local_path(self, path):
        """A relative `models` or `bundle` is found as Ansible finds a file: the role's files/, the playbook's
        folder and its files/ (an AWX project's own folder)."""
        if path.startswith("/"):
            return path
        try:
            return self._find_needle("files", path)
        except AnsibleError as exc:
            raise AnsibleActionFail(f"{path} not found: {exc}") from None


def vaulted(value):
    """Whether a var's value is an Ansible Vault value (the engine redacts it, as it redacts its own vault's)."""
    if VaultHelper is not None:
        return VaultHelper.get_ciphertext(value, with_tags=False) is not None
    return type(value).__name__ == "AnsibleVaultEncryptedUnicode"
