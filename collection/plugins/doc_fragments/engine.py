"""Documentation shared by the tritonfleet.triton modules: where they run, what they need, their common options."""

from __future__ import annotations


class ModuleDocFragment:

    # every module
    DOCUMENTATION = r"""
requirements:
  - tritonfleet installed in the Python that runs ansible-playbook on the controller (for AWX, in the execution
    environment), from a checkout (C(pip install -e /path/to/tritonfleet)).
notes:
  - Runs on the controller. The action plugin hands the play's host, its vars (inventory, group_vars, play vars,
    C(-e), vault) and the connection settings Ansible resolved for it (C(ansible_host), C(ansible_port),
    C(ansible_user) or C(-u), C(ansible_ssh_private_key_file) or C(--private-key), C(ansible_ssh_common_args),
    C(ansible_ssh_extra_args), C(become)) to tritonfleet's engine, which opens its own SSH connection. Ansible
    itself does not connect to the host; leave the connection as it is (ssh) and set C(gather_facts=false).
  - One host per task call; Ansible's forks give the parallelism, C(serial) and C(max_fail_percentage) the batches.
  - Host keys are always checked against the known_hosts file named by C(-o UserKnownHostsFile=) in
    C(ansible_ssh_common_args) (default C(~/.ssh/known_hosts)), whatever C(host_key_checking) says; set
    C(tritonfleet_host_key_policy=accept-new) to trust a new host on first use.
  - Keys only (a key file, or an ssh-agent such as the one AWX loads a machine credential's key into); an SSH
    password fails the host. Become is sudo only.
  - Without C(ansible_user) or C(-u) the engine connects as the local user, as Ansible does.
  - Every secret var (named C(*_password), C(*_token), ..., or listed in C(tritonfleet_secret_vars)) is shown as
    C(********) in the result.
attributes:
  action:
    support: full
  async:
    support: none
  become:
    support: full
    details: sudo only; C(become_user) and the become password are passed to the engine.
  check_mode:
    support: full
  connection:
    support: partial
    details: The connection's settings are used; the engine makes its own SSH connection.
  delegation:
    support: none
  platform:
    support: full
    platforms: posix
extends_documentation_fragment:
  - action_common_attributes
  - action_common_attributes.conn
  - action_common_attributes.flow
"""

    MODELS = r"""
options:
  models:
    description:
      - The model repository on the controller, as C(invoke ... --models), above every var, the inventory's
        C(model_repository) included. Without it, the host's C(model_repository) var.
      - A relative path is looked up as Ansible looks up files (the role's C(files/), the playbook's folder and its
        C(files/)).
    type: path
  bundle:
    description:
      - The Triton bundle, as C(invoke ... --bundle); a relative path is looked up as O(models) is.
      - Without it, the pinned Triton wheel's bundle, built once into tritonfleet's cache on the controller.
    type: str
"""

    TAGS = r"""
options:
  tags:
    description: Run only the engine's steps with these tags, as C(invoke ... --tags) (Ansible's own C(--tags)
      select Ansible tasks, not these steps).
    type: list
    elements: str
    default: []
  skip_tags:
    description: Skip the engine's steps with these tags, as C(invoke ... --skip-tags).
    type: list
    elements: str
    default: []
"""
