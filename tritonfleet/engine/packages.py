"""One package installer: the command that installs named packages with the host's package manager.

Used by the `packages` module and by the doctor's `--fix`, so both install the same way (non-interactive,
no recommends on apt, bounded by the caller's timeout).
"""

from __future__ import annotations

import shlex

PACKAGE_MANAGERS = ("apt", "dnf", "yum", "zypper")


def install_command(pkg_mgr: str, names: list[str]) -> str | None:
    """The shell command installing `names` with `pkg_mgr`; None for a package manager tritonfleet does not know."""
    pkgs = " ".join(shlex.quote(n) for n in names)
    if pkg_mgr == "apt":
        return ("export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && "
                f"apt-get install -y -qq --no-install-recommends {pkgs}")
    if pkg_mgr in ("dnf", "yum"):
        return f"{pkg_mgr} install -y {pkgs}"
    if pkg_mgr == "zypper":
        return f"zypper --non-interactive install {pkgs}"
    return None
