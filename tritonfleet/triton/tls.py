"""gRPC TLS and mutual TLS for Triton: the inventory vars, their check before any host is touched, the files pushed
to the host, the server's flags and what the control machine's gRPC client needs.

Triton 2.51 takes TLS on gRPC only (`--grpc-use-ssl`, `--grpc-server-cert`, `--grpc-server-key`, `--grpc-root-cert`,
`--grpc-use-ssl-mutual`, from `tritonserver --help`); its HTTP endpoint cannot do TLS (put it behind loopback and a
proxy). The vars name PEM files on the control machine; the `grpc_tls` module (modules/tls.py) copies them to
HOST_DIR on the host, root-owned, group of the service user, 0640: the server reads them at start as that user.

Certificates and keys are read with the `cryptography` package (already used for Ansible Vault): each file must
parse, the key must be unencrypted (Triton cannot read an encrypted one) and match its certificate, certificates
must be valid now, the server certificate must be issued by the CA (when one is given) and name the address
tritonfleet reaches the host at (or `triton_grpc_tls_server_name`), as gRPC checks it.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from tritonfleet.engine import varspec
from tritonfleet.errors import TritonfleetError

HOST_DIR = "/etc/tritonfleet/tls"
# var -> the file's name on the host
HOST_FILES = {"triton_grpc_tls_cert": "server.crt", "triton_grpc_tls_key": "server.key",
              "triton_grpc_tls_ca": "ca.crt"}
CLIENT_VARS = ("triton_grpc_tls_client_cert", "triton_grpc_tls_client_key")
FILE_VARS = (*HOST_FILES, *CLIENT_VARS)
FILE_MODE = "0640"  # root-owned, readable by the service group only (the key, and the certificates alike)
DIR_MODE = "0750"

DEFAULT_VARS = {var: "" for var in FILE_VARS} | {"triton_grpc_tls_mutual": False, "triton_grpc_tls_server_name": ""}
_FILE = varspec.optional(varspec.text(allowed="a PEM file on this machine"))
HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?|[0-9A-Fa-f:.]+")
VAR_TYPES = {var: _FILE for var in FILE_VARS} | {
    "triton_grpc_tls_mutual": varspec.BOOLEAN,
    "triton_grpc_tls_server_name": varspec.optional(varspec.text(
        HOST_NAME, "a host name or IP address the server certificate holds (its subjectAltName)",
        "not a host name or address")),
}


def enabled(v: dict) -> bool:
    return bool(v.get("triton_grpc_tls_cert"))


def host_path(var: str) -> str:
    return f"{HOST_DIR}/{HOST_FILES[var]}"


def server_args(v: dict) -> list[str]:
    """tritonserver's gRPC TLS flags for a host's vars (none without a server certificate)."""
    if not enabled(v):
        return []
    args = ["--grpc-use-ssl=true", f"--grpc-server-cert={host_path('triton_grpc_tls_cert')}",
            f"--grpc-server-key={host_path('triton_grpc_tls_key')}"]
    if v.get("triton_grpc_tls_ca"):
        args.append(f"--grpc-root-cert={host_path('triton_grpc_tls_ca')}")
    if v.get("triton_grpc_tls_mutual"):
        args.append("--grpc-use-ssl-mutual=true")
    return args


def local_path(value: str) -> Path:
    """A var's file as this machine opens it: `~` expanded, relative to the current folder."""
    return Path(str(value)).expanduser().absolute()


def pushed_files(v: dict) -> list[tuple[str, Path]]:
    """(path on the host, file on this machine) of every file the host gets, in a fixed order."""
    return [(host_path(var), local_path(v[var])) for var in HOST_FILES if v.get(var)]


@dataclass(frozen=True)
class ClientTls:
    """What the control machine's gRPC client needs to speak TLS to a server: files on this machine (as
    tritonclient takes them) and the name the server's certificate must hold ("" for the address dialled)."""

    root_certificates: str | None = None  # None: the system's trusted CAs
    private_key: str | None = None  # mutual TLS: the client's key and certificate
    certificate_chain: str | None = None
    server_name: str = ""

    def channel_args(self) -> list[tuple]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def describe(self) -> str:
        return "mutual TLS" if self.certificate_chain else "TLS"


def client_tls(v: dict, address: str = "", via_forward: bool = False) -> ClientTls | None:
    """The client side for a host's vars; None when its gRPC is plaintext. Through an SSH forward the client dials
    127.0.0.1, so the certificate is checked against the host's address (or triton_grpc_tls_server_name)."""
    if not enabled(v):
        return None
    name = v.get("triton_grpc_tls_server_name") or (address if via_forward else "")

    def path(var):
        return str(local_path(v[var])) if v.get(var) else None

    mutual = bool(v.get("triton_grpc_tls_mutual"))
    return ClientTls(path("triton_grpc_tls_ca"), path("triton_grpc_tls_client_key") if mutual else None,
                     path("triton_grpc_tls_client_cert") if mutual else None, name)


# ---------------------------------------------------------------------------------------------------------------
# the check before any host is touched


class _Refused(Exception):
    def __init__(self, var: str, message: str, hint: str):
        super().__init__(message)
        self.var, self.hint = var, hint


_parsed: dict = {}  # (path, kind, inode, size, mtime) -> the certificates or the key parsed
_checked: dict = {}  # (mutual, the keys of _parsed of every file) -> the server certificate, or why it is refused


def _read(var: str, value: str, kind: str) -> tuple[tuple, bytes | None]:
    """(the cache key of the file as it is now, its bytes, or None when that key was parsed already): every host
    of a fleet names the same files, which are read and parsed once while they do not change."""
    path = local_path(value)
    try:
        if not path.is_file():
            raise _Refused(var, f"{var} names {path}, which " + (
                "is not a file" if path.exists() else "does not exist on this machine"),
                "give the path of a PEM file on the control machine (relative paths are relative to the current "
                "folder; `{{ inventory_dir }}/tls/server.crt` keeps it beside the inventory)")
        st = path.stat()
        key = (str(path), kind, st.st_ino, st.st_size, st.st_mtime_ns)
        return key, None if key in _parsed else path.read_bytes()
    except OSError as exc:
        raise _Refused(var, f"{var}: cannot read {path}: {exc.strerror}",
                       "make the file readable by the user running tritonfleet") from None


def _certificates(var: str, value: str) -> list:
    from cryptography import x509

    path = local_path(value)
    key, data = _read(var, value, "cert")
    if data is not None:
        try:
            _parsed[key] = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise _Refused(var, f"{var}: {path} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)",
                           "give a PEM-encoded certificate (convert DER with "
                           "`openssl x509 -inform der -in FILE -out FILE.pem`)") from None
    return _parsed[key]


def _private_key(var: str, value: str):
    from cryptography.hazmat.primitives import serialization

    path = local_path(value)
    key, data = _read(var, value, "key")
    if data is not None:
        try:
            _parsed[key] = serialization.load_pem_private_key(data, password=None)
        except TypeError:  # "Password was not given but private key is encrypted"
            raise _Refused(var, f"{var}: {path} is an encrypted private key, which Triton cannot read",
                           "give it without a passphrase (`openssl pkey -in KEY -out KEY.plain`) and keep it safe "
                           "on this machine; on the host it is readable by root and the service group only") from None
        except Exception as exc:  # ValueError; UnsupportedAlgorithm for key types it does not know
            raise _Refused(var, f"{var}: {path} holds no PEM private key ({type(exc).__name__})",
                           "give the PEM-encoded private key (`-----BEGIN PRIVATE KEY-----`) of the "
                           "certificate") from None
    return _parsed[key]


def _public_bytes(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _utc(cert, which: str) -> datetime.datetime:
    value = getattr(cert, f"{which}_utc", None)  # cryptography >= 42
    return value if value is not None else getattr(cert, which).replace(tzinfo=datetime.timezone.utc)


def _subject(cert) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _check_valid_now(var: str, path, certs) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    for cert in certs:
        before, after = _utc(cert, "not_valid_before"), _utc(cert, "not_valid_after")
        if now > after or now < before:
            state = f"expired on {after:%Y-%m-%d %H:%M} UTC" if now > after else \
                f"is not valid before {before:%Y-%m-%d %H:%M} UTC"
            raise _Refused(var, f"{var}: certificate {_subject(cert)} in {path} {state}",
                           "issue a new certificate (and check this machine's clock)")


def _matches_key(cert_var: str, cert, key_var: str, key, cert_path, key_path) -> None:
    if _public_bytes(cert.public_key()) != _public_bytes(key.public_key()):
        raise _Refused(key_var, f"{key_var} ({key_path}) is not the key of {cert_var} ({cert_path}, "
                                f"{_subject(cert)})",
                       "give the private key the certificate was issued for, or the certificate of this key")


def _issued_by(chain: list, cas: list) -> bool:
    """Each certificate of `chain` issued by the next, the last by one of `cas` (or one of them itself)."""
    for cert, issuer in zip(chain, chain[1:]):
        if not _signed(cert, issuer):
            return False
    last = chain[-1]
    return any(_public_bytes(last.public_key()) == _public_bytes(ca.public_key()) or _signed(last, ca) for ca in cas)


def _signed(cert, issuer) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except Exception:  # ValueError (names differ), InvalidSignature, TypeError (unsupported key)
        return False


def certificate_names(cert) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) a certificate is valid for: its subjectAltName, or without one its common name."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        common = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
        return [str(c) for c in common], []
    return ([str(n) for n in san.get_values_for_type(x509.DNSName)],
            [str(ip) for ip in san.get_values_for_type(x509.IPAddress)])


def name_matches(name: str, cert) -> bool:
    """Whether gRPC's check of `name` (an address or host name dialled) against the certificate passes: an IP
    address against the IP entries, a name against the DNS entries (a leading `*.` stands for one label)."""
    dns, ips = certificate_names(cert)
    try:
        wanted = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        wanted = None
    if wanted is not None:
        return any(ipaddress.ip_address(ip) == wanted for ip in ips)
    name = name.lower().rstrip(".")
    for pattern in (d.lower().rstrip(".") for d in dns):
        if pattern == name:
            return True
        if pattern.startswith("*.") and "." in name and name.split(".", 1)[1] == pattern[2:]:
            return True
    return False


def _checked_files(given: dict, mutual: bool):
    """The server's certificate, once its files, the CA's and (mutual TLS) the client's passed every check that
    does not depend on the host; raises _Refused. Cached while the files do not change: a fleet names the same."""
    cert_var, key_var, ca_var = "triton_grpc_tls_cert", "triton_grpc_tls_key", "triton_grpc_tls_ca"
    ccert_var, ckey_var = CLIENT_VARS
    kinds = {cert_var: "cert", key_var: "key", ca_var: "cert", ccert_var: "cert", ckey_var: "key"}
    cache_key = (mutual, *(_read(var, given[var], kinds[var])[0] for var in FILE_VARS if given[var]))
    if cache_key not in _checked:
        try:
            _checked[cache_key] = _check_files(given, mutual)
        except _Refused as exc:
            _checked[cache_key] = exc
    result = _checked[cache_key]
    if isinstance(result, _Refused):
        raise result
    return result


def _check_files(given: dict, mutual: bool):
    cert_var, key_var, ca_var = "triton_grpc_tls_cert", "triton_grpc_tls_key", "triton_grpc_tls_ca"
    ccert_var, ckey_var = CLIENT_VARS
    chain = _certificates(cert_var, given[cert_var])
    key = _private_key(key_var, given[key_var])
    cert_path, key_path = local_path(given[cert_var]), local_path(given[key_var])
    _check_valid_now(cert_var, cert_path, chain)
    _matches_key(cert_var, chain[0], key_var, key, cert_path, key_path)
    cas = []
    if given[ca_var]:
        cas = _certificates(ca_var, given[ca_var])
        _check_valid_now(ca_var, local_path(given[ca_var]), cas)
        if not _issued_by(chain, cas):
            raise _Refused(cert_var, f"{cert_var} ({cert_path}, {_subject(chain[0])}, issued by "
                                     f"{chain[0].issuer.rfc4514_string()}) is not signed by {ca_var} "
                                     f"({local_path(given[ca_var])}, {', '.join(map(_subject, cas))}): clients "
                                     "that trust that CA would refuse the server",
                            f"give the CA that issued the certificate in {ca_var}, or put the intermediate "
                            f"certificates after the server's in {cert_var}")
    if mutual:
        ccert = _certificates(ccert_var, given[ccert_var])
        ckey = _private_key(ckey_var, given[ckey_var])
        _check_valid_now(ccert_var, local_path(given[ccert_var]), ccert)
        _matches_key(ccert_var, ccert[0], ckey_var, ckey, local_path(given[ccert_var]),
                     local_path(given[ckey_var]))
        if not _issued_by(ccert, cas):
            raise _Refused(ccert_var, f"{ccert_var} ({local_path(given[ccert_var])}, {_subject(ccert[0])}) is not "
                                      f"signed by {ca_var}: the server would refuse tritonfleet's calls",
                            f"issue the client certificate from the CA in {ca_var}")
    return chain[0]


def _problem(host, v: dict) -> _Refused | None:
    given = {var: v.get(var) for var in (*FILE_VARS, "triton_grpc_tls_mutual")}
    cert_var, key_var, ca_var = "triton_grpc_tls_cert", "triton_grpc_tls_key", "triton_grpc_tls_ca"
    ccert_var, ckey_var = CLIENT_VARS
    mutual = given["triton_grpc_tls_mutual"]
    if bool(given[cert_var]) != bool(given[key_var]):
        missing, present = (key_var, cert_var) if given[cert_var] else (cert_var, key_var)
        return _Refused(present, f"{present} is set but {missing} is not: gRPC TLS needs the server's certificate "
                                 "and its key", f"set {missing} too, or neither for plaintext gRPC")
    if not given[cert_var]:
        extra = [var for var in (ca_var, *CLIENT_VARS) if given[var]] + (["triton_grpc_tls_mutual"] if mutual else [])
        if extra:
            return _Refused(extra[0], f"{extra[0]} is set but gRPC TLS is off: it needs triton_grpc_tls_cert and "
                                      "triton_grpc_tls_key (the server's certificate and key)",
                            "set triton_grpc_tls_cert and triton_grpc_tls_key, or remove " + ", ".join(extra))
        return None
    if mutual:
        missing = [var for var in (ca_var, ccert_var, ckey_var) if not given[var]]
        if missing:
            return _Refused("triton_grpc_tls_mutual",
                            f"triton_grpc_tls_mutual is true but {', '.join(missing)} "
                            f"{'is' if len(missing) == 1 else 'are'} not set: with mutual TLS Triton accepts only "
                            "clients whose certificate the CA signed, tritonfleet included",
                            "set triton_grpc_tls_ca (the CA that signs client certificates) and "
                            "triton_grpc_tls_client_cert / triton_grpc_tls_client_key (what tritonfleet presents)")
    elif given[ccert_var] or given[ckey_var]:
        var = ccert_var if given[ccert_var] else ckey_var
        return _Refused(var, f"{var} is set but triton_grpc_tls_mutual is not true: the server would not ask for "
                             "a client certificate", "set triton_grpc_tls_mutual: true, or remove the client "
                                                     "certificate and key")
    certificate = _checked_files(given, mutual)
    cert_path = local_path(given[cert_var])
    target = v.get("triton_grpc_tls_server_name") or host.address
    if not name_matches(target, certificate):
        dns, ips = certificate_names(certificate)
        var = "triton_grpc_tls_server_name" if v.get("triton_grpc_tls_server_name") else cert_var
        return _Refused(var, f"host {host.name}: the server certificate {cert_path} is for "
                             f"{', '.join(dns + ips) or 'no name'}, not {target}, the "
                             + ("name set in triton_grpc_tls_server_name" if v.get("triton_grpc_tls_server_name")
                                else "address tritonfleet reaches the host at (ansible_host)")
                             + ": gRPC clients would refuse it",
                        f"issue the certificate with {target} in its subjectAltName "
                        f"(`-addext 'subjectAltName={'IP' if _is_ip(target) else 'DNS'}:{target}'`), or set "
                        "triton_grpc_tls_server_name to a name it holds")
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
        return True
    except ValueError:
        return False


def check_vars(host, v: dict) -> None:
    """Refuse a host's gRPC TLS vars that cannot work, before any host is touched: TritonfleetError naming the
    host, the var, the file and line that set it, what is wrong and what to do."""
    if not any(v.get(var) for var in (*FILE_VARS, "triton_grpc_tls_mutual")):
        return
    try:
        problem = _problem(host, v)
    except _Refused as exc:
        problem = exc
    if problem is not None:
        file, line = host.origins.get(problem.var, (None, None))
        message = str(problem)
        if not message.startswith("host "):
            message = f"host {host.name}: {message}"
        raise TritonfleetError(message, file=file, line=line, hint=problem.hint)


# ---------------------------------------------------------------------------------------------------------------
# the client's failures, explained

_VERIFY = re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|unable to get local issuer", re.I)
_NAME = re.compile(r"Hostname Verification Check failed|Peer name .* is not in peer certificate", re.I)
_NOT_TLS = re.compile(r"WRONG_VERSION_NUMBER|wrong version number|packet length too long|record layer failure", re.I)
_CLOSED = re.compile(r"Socket closed|Connection reset|End of TCP stream", re.I)


def explain(error: str, tls: ClientTls | None) -> str:
    """What to check for a failed gRPC call, from its error text (as gRPC 1.6x words it); "" when nothing
    specific is known. A refused client certificate reads as a closed socket on the client side: only the server's
    log says "peer did not return a certificate"."""
    if tls is None:
        if _CLOSED.search(error) or _NOT_TLS.search(error):
            return ("the server closed the connection: if it speaks TLS on gRPC (it was deployed with "
                    "triton_grpc_tls_cert), give this run the same triton_grpc_tls_* vars")
        return ""
    if _VERIFY.search(error):
        return ("the server's certificate is not signed by the CA this machine checks it with: "
                + ("triton_grpc_tls_ca must be the CA that issued the host's triton_grpc_tls_cert"
                   if tls.root_certificates else
                   "no triton_grpc_tls_ca is set, so the system's CAs are used: set it to the CA that issued "
                   "the certificate"))
    if _NAME.search(error):
        return (f"the server's certificate does not name {tls.server_name or 'the address dialled'}: issue it with "
                "that address in its subjectAltName, or set triton_grpc_tls_server_name to a name it holds")
    if _NOT_TLS.search(error):
        return "the server does not speak TLS on gRPC: deploy the TLS vars to it (`invoke start`), or unset them"
    if _CLOSED.search(error):
        if tls.certificate_chain:
            return ("the server closed the connection: it did not accept this machine's client certificate (check "
                    "that triton_grpc_tls_ca signed triton_grpc_tls_client_cert), or it does not speak TLS")
        return ("the server closed the connection: it may require a client certificate (mutual TLS: set "
                "triton_grpc_tls_mutual with triton_grpc_tls_client_cert and _key), or not speak TLS")
    if re.search(r"handshake|ssl|tls", error, re.I):
        return (f"the gRPC {tls.describe()} handshake failed: check triton_grpc_tls_ca, the certificate's "
                "subjectAltName and, for mutual TLS, the client certificate and key")
    return ""
