"""Where tritonfleet keeps things on the control machine.

Caches (base image, package mirror, Triton bundles) outlive a lab and a checkout, so CI on the same
machine reuses them; lab state (overlays, keys, known_hosts, consoles) lives until `lab.down`.
"""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("TRITONFLEET_CACHE", "/var/cache/tritonfleet"))
LAB_STATE_DIR = Path(os.environ.get("TRITONFLEET_LAB_STATE", "/var/lib/tritonfleet/lab"))
