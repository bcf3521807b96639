"""gRPC TLS and mutual TLS (issue 16 item 3), with a CA made by the test (tests/tlskit.py, `cryptography`):
the vars checked before any host is touched, the server's flags, the client side (Endpoint, smoke test) and,
marked `server`, a real 2.51 tritonserver started with TLS and with mutual TLS."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import yaml

from labkit import fault_log, invoke_here as invoke, local_inventory, show  # noqa: F401  (fixture)
from test_module_cases import run_case
from tlskit import CA, encrypted_key
from tritonfleet import secrets
from tritonfleet.engine.inventory import Host, load_inventory
from tritonfleet.engine.report import redact
from tritonfleet.errors import TritonfleetError
from tritonfleet.fleet.run import checked_host_vars, host_vars
from tritonfleet.triton import tls
from tritonfleet.triton.endpoint import Endpoint, endpoint_for
from tritonfleet.triton.smoke import smoke_test

from test_smoke import EXAMPLES, start_server, triton_root  # noqa: F401  (fixtures)

AREA = "gRPC TLS"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and gpu08.lab, a client certificate, and a second CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca = CA(folder)
    other = CA(folder, "other")
    return {
        "folder": folder, "ca": ca, "other": other,
        "server": ca.issue("server", ips=["127.0.0.1"], dns=["gpu08.lab", "*.fleet.lab"]),
        "client": ca.issue("client", client=True),
        "other_client": other.issue("other-client", client=True),
        "other_server": other.issue("other-server", ips=["127.0.0.1"]),
        "for_another_ip": ca.issue("for-another-ip", ips=["10.213.0.99"]),
        "expired": ca.issue("expired", ips=["127.0.0.1"], valid_days=1, starts_in_days=-3),
    }


def tls_vars(pki, mutual=False, **extra) -> dict:
    given = {"triton_grpc_tls_cert": str(pki["server"].cert), "triton_grpc_tls_key": str(pki["server"].key),
             "triton_grpc_tls_ca": str(pki["ca"].cert)}
    if mutual:
        given |= {"triton_grpc_tls_mutual": True, "triton_grpc_tls_client_cert": str(pki["client"].cert),
                  "triton_grpc_tls_client_key": str(pki["client"].key)}
    return {k: v for k, v in (given | extra).items() if v is not None}


def inventory(tmp_path, host_vars_: dict, address: str = "127.0.0.1") -> Path:
    """hosts.yml: gpu07 without TLS, gpu08 (line 5) with the vars given, one per line after it."""
    path = tmp_path / "hosts.yml"
    lines = ["all:", "  hosts:", "    gpu07:", "      ansible_host: 127.0.0.1", "    gpu08:",
             f"      ansible_host: {address}"]
    lines += [f"      {k}: {yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
              for k, v in host_vars_.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def refused(tmp_path, host_vars_: dict, address: str = "127.0.0.1") -> TritonfleetError:
    with pytest.raises(TritonfleetError) as err:
        checked_host_vars(load_inventory(inventory(tmp_path, host_vars_, address)).select())
    return err.value


def shown(err, pki) -> str:
    """The error as a user reads it, without its hint, paths shortened: hosts.yml:LINE: host gpu08: ..."""
    return f"{Path(err.file).name}:{err.line}: " + " ".join(err.message.split()).replace(f"{pki['folder']}/", "")


# ---- the vars, checked before any host is touched -------------------------------------------------------------

# (what, vars of gpu08 from the pki, what the error says, what the hint says)
REFUSALS = [
    ("a certificate without its key", lambda p: tls_vars(p, triton_grpc_tls_key=None, triton_grpc_tls_ca=None),
     "triton_grpc_tls_cert is set but triton_grpc_tls_key is not", "set triton_grpc_tls_key too"),
    ("a key without its certificate", lambda p: tls_vars(p, triton_grpc_tls_cert=None, triton_grpc_tls_ca=None),
     "triton_grpc_tls_key is set but triton_grpc_tls_cert is not", "set triton_grpc_tls_cert too"),
    ("a CA without a server certificate", lambda p: {"triton_grpc_tls_ca": str(p["ca"].cert)},
     "triton_grpc_tls_ca is set but gRPC TLS is off", "set triton_grpc_tls_cert and triton_grpc_tls_key"),
    ("`triton_grpc_tls_mutual: true` without a CA or a client certificate",
     lambda p: tls_vars(p, triton_grpc_tls_ca=None, triton_grpc_tls_mutual=True),
     "triton_grpc_tls_mutual is true but triton_grpc_tls_ca, triton_grpc_tls_client_cert, "
     "triton_grpc_tls_client_key are not set", "what tritonfleet presents"),
    ("a client certificate without `triton_grpc_tls_mutual`",
     lambda p: tls_vars(p, triton_grpc_tls_client_cert=str(p["client"].cert),
                        triton_grpc_tls_client_key=str(p["client"].key)),
     "triton_grpc_tls_client_cert is set but triton_grpc_tls_mutual is not true", "set triton_grpc_tls_mutual"),
    ("`triton_grpc_tls_mutual: maybe`", lambda p: tls_vars(p, triton_grpc_tls_mutual="maybe"),
     "triton_grpc_tls_mutual is 'maybe'", "true/false"),
    ("a certificate file that does not exist",
     lambda p: tls_vars(p, triton_grpc_tls_cert=str(p["folder"] / "nope.crt")),
     "triton_grpc_tls_cert names nope.crt, which does not exist on this machine", "{{ inventory_dir }}"),
    ("a folder given as the key", lambda p: tls_vars(p, triton_grpc_tls_key=str(p["folder"])),
     "which is not a file", "a PEM file on the control machine"),
    ("a certificate file that is not PEM", lambda p: tls_vars(p, triton_grpc_tls_cert=str(p["server"].key)),
     "server.key holds no PEM certificate", "openssl x509 -inform der"),
    ("a key file that is a certificate", lambda p: tls_vars(p, triton_grpc_tls_key=str(p["server"].cert)),
     "server.crt holds no PEM private key", "BEGIN PRIVATE KEY"),
    ("a key encrypted with a passphrase",
     lambda p: tls_vars(p, triton_grpc_tls_key=str(encrypted_key(p["server"].key, p["folder"] / "enc.key"))),
     "enc.key is an encrypted private key, which Triton cannot read", "openssl pkey"),
    ("the key of another certificate", lambda p: tls_vars(p, triton_grpc_tls_key=str(p["client"].key)),
     "triton_grpc_tls_key (client.key) is not the key of triton_grpc_tls_cert (server.crt, CN=server)",
     "the private key the certificate was issued for"),
    ("a server certificate another CA signed", lambda p: tls_vars(
        p, triton_grpc_tls_cert=str(p["other_server"].cert), triton_grpc_tls_key=str(p["other_server"].key)),
     "is not signed by triton_grpc_tls_ca", "give the CA that issued the certificate"),
    ("an expired server certificate", lambda p: tls_vars(
        p, triton_grpc_tls_cert=str(p["expired"].cert), triton_grpc_tls_key=str(p["expired"].key)),
     "triton_grpc_tls_cert: certificate CN=expired in expired.crt expired on", "issue a new certificate"),
    ("a server certificate for another address than the host's `ansible_host`", lambda p: tls_vars(
        p, triton_grpc_tls_cert=str(p["for_another_ip"].cert), triton_grpc_tls_key=str(p["for_another_ip"].key)),
     "host gpu08: the server certificate for-another-ip.crt is for 10.213.0.99, not 127.0.0.1, the address "
     "tritonfleet reaches the host at (ansible_host): gRPC clients would refuse it",
     "subjectAltName=IP:127.0.0.1"),
    ("`triton_grpc_tls_server_name` the certificate does not hold",
     lambda p: tls_vars(p, triton_grpc_tls_server_name="gpu09.lab"),
     "is for gpu08.lab, *.fleet.lab, 127.0.0.1, not gpu09.lab, the name set in triton_grpc_tls_server_name",
     "subjectAltName=DNS:gpu09.lab"),
    ("a client certificate another CA signed (mutual TLS)", lambda p: tls_vars(
        p, True, triton_grpc_tls_client_cert=str(p["other_client"].cert),
        triton_grpc_tls_client_key=str(p["other_client"].key)),
     "triton_grpc_tls_client_cert (other-client.crt, CN=other-client) is not signed by triton_grpc_tls_ca: the "
     "server would refuse tritonfleet's calls", "issue the client certificate from the CA"),
    ("a client key that is not the client certificate's (mutual TLS)",
     lambda p: tls_vars(p, True, triton_grpc_tls_client_key=str(p["server"].key)),
     "triton_grpc_tls_client_key (server.key) is not the key of triton_grpc_tls_client_cert", "private key"),
]


@pytest.mark.parametrize("what, make, says, hint", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_bad_tls_vars_are_refused_before_any_host_is_touched(tmp_path, pki, fault_log, what, make, says, hint):
    given = make(pki)
    err = refused(tmp_path, given)
    text = shown(err, pki)
    assert says in text and hint in (err.hint or ""), f"{text}\nhint: {err.hint}"
    assert "host gpu08" in text and err.file == str(tmp_path / "hosts.yml"), text
    assert err.line and err.line >= 7, "the line of the var that is wrong"  # gpu08's vars start at line 6
    fault_log(AREA, f"{what}", f"refused before any host is touched (exit 2): `{text}` fix: {err.hint}")


@pytest.mark.parametrize("address, extra", [
    ("127.0.0.1", {}),
    ("gpu08.lab", {}),
    ("GPU08.lab", {}),
    ("node3.fleet.lab", {}),  # *.fleet.lab
    ("10.213.0.99", {"triton_grpc_tls_server_name": "gpu08.lab"}),
])
def test_good_tls_vars_pass_and_give_the_flags(tmp_path, pki, address, extra):
    hostvars = checked_host_vars(load_inventory(inventory(tmp_path, tls_vars(pki, **extra), address)).select())
    assert not any("grpc-use-ssl" in a for a in hostvars["gpu07"]["triton_server_args"])
    args = hostvars["gpu08"]["triton_server_args"]
    assert args[-4:] == ["--grpc-use-ssl=true", "--grpc-server-cert=/etc/tritonfleet/tls/server.crt",
                         "--grpc-server-key=/etc/tritonfleet/tls/server.key",
                         "--grpc-root-cert=/etc/tritonfleet/tls/ca.crt"]


def test_mutual_tls_flags_and_the_unit(pki):
    from test_api_key import exec_start, unit
    line = exec_start(unit(**tls_vars(pki, mutual=True)))
    for flag in ("--grpc-use-ssl=true", "--grpc-server-cert=/etc/tritonfleet/tls/server.crt",
                 "--grpc-server-key=/etc/tritonfleet/tls/server.key", "--grpc-root-cert=/etc/tritonfleet/tls/ca.crt",
                 "--grpc-use-ssl-mutual=true"):
        assert f" {flag}" in line, line
    assert str(pki["folder"]) not in line  # the unit names the host's copies, never this machine's paths
    assert "ssl" not in exec_start(unit())
    without_ca = exec_start(unit(**tls_vars(pki, triton_grpc_tls_ca=None)))  # the client trusts the system's CAs
    assert " --grpc-use-ssl=true" in without_ca and "--grpc-root-cert" not in without_ca


def test_metrics_families_can_be_turned_off():
    from test_api_key import exec_start, unit
    assert "-metrics=false" not in exec_start(unit())
    line = exec_start(unit(triton_allow_gpu_metrics="no", triton_allow_cpu_metrics=False))
    assert " --allow-gpu-metrics=false" in line and " --allow-cpu-metrics=false" in line
    with pytest.raises(TritonfleetError, match="triton_allow_gpu_metrics is 'sometimes'"):
        unit(triton_allow_gpu_metrics="sometimes")


def test_a_bad_tls_var_exits_2_end_to_end(tmp_path, pki, fault_log):
    path = local_inventory(tmp_path / "hosts.yml", triton_grpc_tls_cert=str(pki["server"].cert))
    proc = invoke("smoke", "--inventory", path)
    assert proc.returncode == 2, show(proc)
    assert "triton_grpc_tls_cert is set but triton_grpc_tls_key is not" in proc.stderr, show(proc)
    assert "UNREACHABLE" not in proc.stdout + proc.stderr and "Traceback" not in proc.stdout + proc.stderr
    proc = invoke("smoke", "--inventory", path, "--json")
    assert proc.returncode == 2 and '"ok": false' in proc.stdout, show(proc)
    fault_log(AREA, "`triton_grpc_tls_cert` without `triton_grpc_tls_key`, `invoke smoke`",
              f"exit 2 before any host is touched: `{proc.stderr.strip().splitlines()[0].replace(f'{tmp_path}/', '')}`")


# ---- the client side ------------------------------------------------------------------------------------------

def test_the_endpoint_carries_the_client_side(pki):
    host = Host("gpu08", {"ansible_host": "10.213.0.18"}, ("lab",))
    plain = endpoint_for("10.213.0.18", host_vars(host, {}))
    assert plain.grpc_tls is None
    direct = endpoint_for("10.213.0.18", host_vars(host, tls_vars(pki)))
    assert direct.grpc_tls == tls.ClientTls(str(pki["ca"].cert), None, None, "")
    mutual = endpoint_for("10.213.0.18", host_vars(host, tls_vars(pki, mutual=True)))
    assert (mutual.grpc_tls.private_key, mutual.grpc_tls.certificate_chain) == (str(pki["client"].key),
                                                                               str(pki["client"].cert))

    class Forwarding:
        def forward(self, ports):
            return [40000, 40001]

    forwarded = endpoint_for("10.213.0.18", host_vars(host, tls_vars(pki, triton_http_address="127.0.0.1")),
                             Forwarding())
    # through the forward the client dials 127.0.0.1 and checks the certificate against the host's address
    assert (forwarded.address, forwarded.grpc_port, forwarded.grpc_tls.server_name) == ("127.0.0.1", 40001,
                                                                                         "10.213.0.18")
    assert forwarded.grpc_tls.channel_args() == [("grpc.ssl_target_name_override", "10.213.0.18")]
    named = endpoint_for("10.213.0.18", host_vars(host, tls_vars(pki, triton_grpc_tls_server_name="gpu08.lab")))
    assert named.grpc_tls.server_name == "gpu08.lab"


@pytest.mark.parametrize("error, client, says", [
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:8001: Tls handshake failed "
     "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED",
     tls.ClientTls("/ca.crt"), "triton_grpc_tls_ca must be the CA that issued"),
    ("CERTIFICATE_VERIFY_FAILED: self signed certificate in certificate chain", tls.ClientTls(),
     "no triton_grpc_tls_ca is set"),
    ("Custom verification check failed with error: UNAUTHENTICATED: Hostname Verification Check failed.",
     tls.ClientTls("/ca.crt", server_name="10.0.0.1"), "does not name 10.0.0.1"),
    ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:8001: Socket closed",
     tls.ClientTls("/ca.crt"), "it may require a client certificate (mutual TLS"),
    ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:8001: Socket closed",
     tls.ClientTls("/ca.crt", "/c.key", "/c.crt"), "it did not accept this machine's client certificate"),
    ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:8001: Socket closed",
     None, "give this run the same triton_grpc_tls_* vars"),
    ("Deadline Exceeded", None, ""),
])
def test_a_failed_grpc_call_says_what_to_check(error, client, says):
    hint = tls.explain(error, client)
    assert says in hint if says else hint == ""


def test_the_module_never_shows_the_key(tmp_path):
    key = tmp_path / "server.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgFAKEFAKEFAKEFAKE\n"
                   "-----END PRIVATE KEY-----\n")
    cert = tmp_path / "server.crt"
    cert.write_text("certificate\n")
    outcome, conn, _, _ = run_case({"module": "grpc_tls", "vars": {"triton_grpc_tls_cert": str(cert),
                                                                   "triton_grpc_tls_key": str(key)}})
    assert outcome.status == "changed", outcome.msg
    body = key.read_text().splitlines()[1]
    everything = outcome.msg + outcome.diff + "".join(conn.commands) + repr(outcome.data)
    assert body not in everything and "content not shown" in outcome.diff
    assert redact(f"line: {body}") == f"line: {secrets.REDACTED}"  # registered, should anything print it


# ---- a real 2.51 server with TLS and mutual TLS ---------------------------------------------------------------

def local_flags(v: dict) -> list[str]:
    """tls.server_args with the host's paths swapped for this machine's files (what the module pushes there)."""
    swap = {tls.host_path(var): str(v[var]) for var in tls.HOST_FILES if v.get(var)}
    return [next((a.replace(h, l) for h, l in swap.items() if a.endswith("=" + h)), a) for a in tls.server_args(v)]


def serve(start_server, tmp_path, v: dict):
    repo = tmp_path / "models"
    shutil.copytree(EXAMPLES / "add_sub", repo / "add_sub")
    server = start_server(repo, local_flags(v))
    from tritonfleet.triton.server import ServerClient
    ready, _ = ServerClient(Endpoint("127.0.0.1", server.http_port, server.grpc_port)).wait_ready(timeout_s=120)
    assert ready, server.log_text()
    return server


def timed_smoke(server, client: tls.ClientTls | None):
    started = time.monotonic()
    report = smoke_test(Endpoint("127.0.0.1", server.http_port, server.grpc_port, grpc_tls=client), timeout_s=20)
    return report, time.monotonic() - started


@pytest.mark.server
def test_a_real_server_with_grpc_tls(start_server, tmp_path, pki, fault_log):
    v = tls_vars(pki)
    server = serve(start_server, tmp_path, v)
    assert "--grpc-use-ssl=true" in " ".join(local_flags(v))
    good, _ = timed_smoke(server, tls.ClientTls(str(pki["ca"].cert)))
    assert good.ok and good.models[0].latency_ms.keys() == {"http", "grpc"}, good.failures()

    wrong_ca, seconds = timed_smoke(server, tls.ClientTls(str(pki["other"].cert)))
    lines = "\n".join(wrong_ca.failures())
    assert not wrong_ca.ok and seconds < 10, (seconds, lines)
    assert "grpc on port" in lines and "over TLS does not answer" in lines and "CERTIFICATE_VERIFY_FAILED" in lines
    assert "triton_grpc_tls_ca must be the CA that issued" in lines, lines

    wrong_name, seconds_name = timed_smoke(server, tls.ClientTls(str(pki["ca"].cert), server_name="gpu09.lab"))
    name_lines = "\n".join(wrong_name.failures())
    assert not wrong_name.ok and seconds_name < 10 and "does not name gpu09.lab" in name_lines, name_lines

    plaintext, seconds_plain = timed_smoke(server, None)
    plain_lines = "\n".join(plaintext.failures())
    assert not plaintext.ok and seconds_plain < 10 and "same triton_grpc_tls_* vars" in plain_lines, plain_lines
    fault_log(AREA, "a real 2.51 server with `--grpc-use-ssl=true` and a test-made CA, smoke-tested from this machine",
              f"with the CA: every model answered over HTTP and gRPC TLS; with another CA: failed in {seconds:.2f} s, "
              f"`{wrong_ca.failures()[0]}`; a certificate without the name dialled: failed in {seconds_name:.2f} s "
              f"naming it; a plaintext client: failed in {seconds_plain:.2f} s, hint to set the TLS vars")


@pytest.mark.server
def test_a_real_server_with_mutual_tls(start_server, tmp_path, pki, fault_log):
    v = tls_vars(pki, mutual=True)
    server = serve(start_server, tmp_path, v)
    client = tls.client_tls(v)
    good, _ = timed_smoke(server, client)
    assert good.ok and good.models[0].latency_ms.keys() == {"http", "grpc"}, good.failures()

    without, seconds = timed_smoke(server, tls.ClientTls(str(pki["ca"].cert)))
    lines = "\n".join(without.failures())
    assert not without.ok and seconds < 10 and "it may require a client certificate (mutual TLS" in lines, lines
    assert "peer did not return a certificate" in server.log.read_text(errors="replace")

    foreign, seconds_foreign = timed_smoke(server, tls.ClientTls(str(pki["ca"].cert), str(pki["other_client"].key),
                                                                  str(pki["other_client"].cert)))
    foreign_lines = "\n".join(foreign.failures())
    assert not foreign.ok and seconds_foreign < 10 and "did not accept this machine's client certificate" in \
        foreign_lines, foreign_lines
    fault_log(AREA, "a real 2.51 server with `--grpc-use-ssl-mutual=true`: a client without a certificate, and one "
                    "with a certificate from another CA",
              f"refused in {seconds:.2f} s / {seconds_foreign:.2f} s (the client sees `Socket closed`; the server "
              f"logs `peer did not return a certificate`), reported as `{without.failures()[0]}`; with the client "
              "certificate the CA signed every model answered over gRPC")
