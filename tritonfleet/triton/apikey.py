"""The key that opens Triton's restricted APIs (`--http-restricted-api`, `--grpc-restricted-protocol`).

One key per host, kept root-only on the host in KEY_FILE, an EnvironmentFile the unit reads as root: the unit
itself (world-readable) names only `${TRITONFLEET_API_KEY}`. tritonfleet reads the key with the host's facts
and sends it with its own calls (loads, unloads, the repository index); it never writes it on the control
machine, and every output redacts it (tritonfleet/secrets.py).
"""

from __future__ import annotations

import re
import secrets as _random

KEY_DIR = "/etc/tritonfleet"
KEY_FILE = f"{KEY_DIR}/api-key.env"
KEY_VARIABLE = "TRITONFLEET_API_KEY"
HEADER = "tritonfleet-admin-key"
# Triton's gRPC server looks for the restricted-protocol key under this prefix (2.51: "This protocol is
# restricted, expecting header 'triton-grpc-protocol-<key>'"); its HTTP server under the bare name.
GRPC_HEADER = f"triton-grpc-protocol-{HEADER}"
# What may be restricted without breaking tritonfleet's own calls: its smoke test reads health, metadata,
# config and infers without the key, as any client does.
RESTRICTABLE_APIS = ("model-repository", "shared-memory", "logging", "trace", "statistics")
DEFAULT_RESTRICTED_APIS = ["model-repository", "shared-memory", "logging", "trace"]
# url-safe text: Triton splits the flag value at ',', ':' and '=', systemd expands '$' and '%'
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,256}")
# The key as the facts and the doctor read it: one line, `api_key=<key>` (empty without the file); shell builtins
# only, as the rest of the facts script.
READ_COMMAND = f"""api_key=
if [ -r {KEY_FILE} ]; then
  while IFS= read -r line || [ -n "$line" ]; do
    case $line in {KEY_VARIABLE}=*) api_key=${{line#{KEY_VARIABLE}=}};; esac
  done < {KEY_FILE}
fi
echo "api_key=$api_key"
"""
_FLAG_KEY = re.compile(r"--(?:http-restricted-api|grpc-restricted-protocol)[= ]\S*?:[^=\s]+=(\S+)")


def new_key() -> str:
    return _random.token_urlsafe(32)


def env_file_text(key: str) -> str:
    return f"{KEY_VARIABLE}={key}\n"


def restricted_args(apis: list[str]) -> list[str]:
    """The flags that restrict `apis` to callers sending the key; systemd puts the key in from KEY_FILE."""
    if not apis:
        return []
    setting = f"{','.join(apis)}:{HEADER}=${{{KEY_VARIABLE}}}"
    return [f"--http-restricted-api={setting}", f"--grpc-restricted-protocol={setting}"]


def http_headers(key: str) -> dict:
    return {HEADER: key} if key else {}


def grpc_headers(key: str) -> dict:
    return {GRPC_HEADER: key} if key else {}


def keys_in_cmdline(cmdline: str) -> list[str]:
    """Keys a running server's command line holds (systemd expanded them into argv), to redact them."""
    return _FLAG_KEY.findall(cmdline)
