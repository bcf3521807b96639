"""Ansible Vault, read as ansible-core reads it (lib/ansible/parsing/vault/__init__.py), so an existing vault works.

Vaulttext is a header, `$ANSIBLE_VAULT;1.1;AES256` or `$ANSIBLE_VAULT;1.2;AES256;<vault id>`, then hex lines. They
decode to three lines: the hex salt, the hex HMAC-SHA256 of the ciphertext and the hex ciphertext. PBKDF2-HMAC-SHA256
(10000 iterations) of the password and salt gives 80 bytes: the AES-256 key, the HMAC key, the CTR counter block;
the plaintext is PKCS7-padded and AES-CTR encrypted. As in Ansible, the vault id in a header only says which password
to try first: every password given is tried.

Passwords come as Ansible takes them (`--vault-id LABEL@FILE`, `--vault-password-file`, ANSIBLE_VAULT_PASSWORD_FILE or
ansible.cfg, `--ask-vault-pass`): `load_secrets` reads them, `configure` makes them the ones `yamlfile.load_yaml`
decrypts every file with. Passwords and decrypted values are registered with tritonfleet/secrets.py, so no output
shows them.
"""

from __future__ import annotations

import binascii
import functools
import getpass
import os
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from tritonfleet import secrets
from tritonfleet.errors import TritonfleetError

HEADER = "$ANSIBLE_VAULT"
DEFAULT_ID = "default"  # Ansible's DEFAULT_VAULT_IDENTITY: the id of a password given without a label
PROMPT = "prompt"  # `--vault-id LABEL@prompt`: ask for it on the terminal
ITERATIONS = 10000
CLIENT_SCRIPT_UNKNOWN_ID = 2  # a `*-client` script's exit code for "no password for this vault id"
PASSWORD_HINT = ("pass --vault-password-file FILE, --vault-id LABEL@FILE or --ask-vault-pass (or set "
                 "ANSIBLE_VAULT_PASSWORD_FILE, or vault_password_file in ansible.cfg)")


class VaultError(TritonfleetError):
    """A vault that cannot be read: no password, a wrong one, or damaged vaulttext."""


@dataclass(frozen=True)
class VaultSecret:
    vault_id: str
    password: bytes = field(repr=False)
    source: str  # where it came from, for errors: a file or "the prompt"


_secrets: list[VaultSecret] = []


def configure(vault_secrets: list[VaultSecret]) -> None:
    """The passwords every later `decrypt` tries; an empty list means no vault can be read."""
    _secrets[:] = vault_secrets


def is_encrypted(text: str) -> bool:
    return text.startswith(HEADER)


def decrypt(vaulttext: str) -> str:
    """The text a vault holds, decrypted with the configured password whose vault id matches first, then the others
    (Ansible's default, DEFAULT_VAULT_ID_MATCH false)."""
    if not _secrets:
        raise VaultError("it is encrypted with Ansible Vault and no vault password was given", hint=PASSWORD_HINT)
    vault_id, salt, mac, ciphertext = _parse(vaulttext)
    for secret in sorted(_secrets, key=lambda s: s.vault_id != vault_id):
        plaintext = _decrypt_with(secret.password, salt, mac, ciphertext)
        if plaintext is not None:
            try:
                return plaintext.decode()
            except UnicodeDecodeError:
                raise VaultError("the decrypted vault is not UTF-8 text") from None
    tried = ", ".join(f"{s.source} (vault id {s.vault_id})" for s in _secrets)
    option = "--vault-password-file FILE" if vault_id == DEFAULT_ID else f"--vault-id {vault_id}@FILE"
    raise VaultError(f"wrong vault password: no vault password given decrypts it (its vault id: {vault_id}; tried "
                     f"{tried})", hint=f"give the password it was encrypted with: {option}")


def _parse(vaulttext: str) -> tuple[str, bytes, bytes, bytes]:
    """(vault id, salt, HMAC, ciphertext) of vaulttext; a 1.1 header's vault id is `default`."""
    lines = vaulttext.strip().splitlines()
    header = [part.strip() for part in lines[0].split(";")]
    if len(header) < 3 or header[0] != HEADER:
        raise VaultError(f"not an Ansible Vault header: {lines[0]!r}",
                         hint="encrypt it again with ansible-vault, or write it in plain text")
    if header[2] != "AES256":
        raise VaultError(f"vault cipher {header[2]!r} is not supported (Ansible writes AES256)")
    vault_id = header[3] if len(header) > 3 and header[3] else DEFAULT_ID
    try:
        salt, mac, ciphertext = binascii.unhexlify("".join(line.strip() for line in lines[1:])).split(b"\n", 2)
        return vault_id, binascii.unhexlify(salt), binascii.unhexlify(mac), binascii.unhexlify(ciphertext)
    except (binascii.Error, ValueError) as exc:
        raise VaultError(f"the vaulttext is damaged ({exc})",
                         hint="copy it again, whole, from the output of ansible-vault") from None


@functools.lru_cache(maxsize=256)
def _keys(password: bytes, salt: bytes) -> tuple[bytes, bytes, bytes]:
    """AES key, HMAC key and counter block. Cached: PBKDF2's 10000 rounds cost milliseconds, and one vaulted file is
    read once per group or host that uses it."""
    derived = PBKDF2HMAC(algorithm=hashes.SHA256(), length=80, salt=salt, iterations=ITERATIONS).derive(password)
    return derived[:32], derived[32:64], derived[64:]


def _decrypt_with(password: bytes, salt: bytes, mac: bytes, ciphertext: bytes) -> bytes | None:
    """The plaintext, or None when the HMAC says this is not the password."""
    aes_key, mac_key, counter = _keys(password, salt)
    check = HMAC(mac_key, hashes.SHA256())
    check.update(ciphertext)
    try:
        check.verify(mac)
    except InvalidSignature:
        return None
    decryptor = Cipher(algorithms.AES(aes_key), modes.CTR(counter)).decryptor()
    unpadder = padding.PKCS7(algorithms.AES.block_size).unpadder()
    try:
        return unpadder.update(decryptor.update(ciphertext) + decryptor.finalize()) + unpadder.finalize()
    except ValueError:
        raise VaultError("the vaulttext is damaged (bad padding)") from None


def load_secrets(sources: list[tuple[str, str]], prompt=None) -> list[VaultSecret]:
    """The passwords named by (vault id, password file or PROMPT) pairs, in Ansible's order of trying. Each is read
    now, before any host is touched: a file that cannot be read or gives no password is an error naming it. A
    PROMPT asks on the terminal (getpass, unless `prompt` is given)."""
    loaded = []
    for vault_id, where in sources:
        if where == PROMPT:
            secret = _prompted(vault_id, prompt or getpass.getpass)
        else:
            secret = read_password_file(where, vault_id)
        secrets.register([secret.password.decode(errors="replace")])
        loaded.append(secret)
    return loaded


def _prompted(vault_id: str, prompt) -> VaultSecret:
    """Asked on the terminal, with Ansible's prompt (`Vault password: `, or `Vault password (prod): `)."""
    text = "Vault password: " if vault_id == DEFAULT_ID else f"Vault password ({vault_id}): "
    try:
        password = prompt(text).strip().encode()
    except EOFError:
        raise VaultError(f"no vault password was typed at the prompt for vault id {vault_id}",
                         hint="type it, or pass --vault-password-file FILE") from None
    if not password:
        raise VaultError(f"the vault password typed for vault id {vault_id} is empty", hint="type the password")
    return VaultSecret(vault_id, password, "the prompt")


def read_password_file(path: str, vault_id: str = DEFAULT_ID) -> VaultSecret:
    """A password file as Ansible reads it (get_file_vault_secret): its text, stripped; if it is executable, what it
    prints on stdout (a `NAME-client` script is asked `--vault-id ID`)."""
    file = Path(path).expanduser()
    if not file.exists():
        raise VaultError("the vault password file was not found", file=str(file),
                         hint="fix the path given to --vault-password-file / --vault-id")
    if file.is_dir():
        raise VaultError("the vault password file is a directory", file=str(file), hint="name the file in it")
    if os.stat(file).st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
        password = _script_output(file, vault_id).strip(b"\r\n")
    else:
        try:
            password = file.read_bytes().strip()
        except OSError as exc:
            raise VaultError(f"cannot read the vault password file: {exc.strerror}", file=str(file),
                             hint="check its permissions") from None
    if not password:
        raise VaultError("the vault password file gives an empty password", file=str(file),
                         hint="write the password in it (or, for a script, print it)")
    return VaultSecret(vault_id, password, str(file))


def _script_output(file: Path, vault_id: str) -> bytes:
    """stdout of a password script; stderr stays on the terminal, as in Ansible, so a script can prompt there."""
    client = file.stem.endswith("-client")
    command = [str(file), "--vault-id", vault_id] if client else [str(file)]
    try:
        proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE if client else None)
    except OSError as exc:
        raise VaultError(f"cannot run the vault password script: {exc.strerror}", file=str(file),
                         hint="if it is not a script, remove its executable bit (chmod -x)") from None
    if proc.returncode:
        detail = (proc.stderr or b"").decode(errors="replace").strip()
        what = (f"found no password for vault id {vault_id}" if client and proc.returncode == CLIENT_SCRIPT_UNKNOWN_ID
                else f"exited {proc.returncode}")
        raise VaultError(f"the vault password script {what}" + (f": {detail}" if detail else ""), file=str(file),
                         hint="run it by hand to see why")
    return proc.stdout
