"""gRPC TLS and mutual TLS deployed to a lab host (gpu07) with a CA made by the test: the server certificate's
subjectAltName is the host's lab address. One deploy with TLS, then mutual TLS, shared by every check."""

from __future__ import annotations

import time

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from labkit import (ADDRESSES, ensure_mine, fault_log, invoke, on_host, report_of, show, wait_for,  # noqa: F401
                    write_inventory)
from tlskit import CA
from tritonfleet.triton import tls

pytestmark = pytest.mark.lab

HOST = "gpu07"
ADDRESS = ADDRESSES[HOST]  # 10.213.0.17
AREA = "gRPC TLS"


def tls_vars(server, ca, client=None) -> dict:
    given = {"triton_grpc_tls_cert": str(server.cert), "triton_grpc_tls_key": str(server.key),
             "triton_grpc_tls_ca": str(ca.cert)}
    if client is not None:
        given |= {"triton_grpc_tls_mutual": True, "triton_grpc_tls_client_cert": str(client.cert),
                  "triton_grpc_tls_client_key": str(client.key)}
    return given


def run(task: str, inventory: str, *args):
    started = time.monotonic()
    proc = invoke(task, "--host", HOST, "--inventory", inventory, "--json", *args)
    return proc, report_of(proc), time.monotonic() - started


def step(report, module: str) -> dict:
    return next(s for s in report["hosts"][0]["steps"] if s["module"] == module)


def grpc_live(**tls_args) -> str:
    """'live' or the error of a gRPC call from this machine to the host (bounded)."""
    try:
        client = grpcclient.InferenceServerClient(f"{ADDRESS}:8001", **tls_args)
        return "live" if client.is_server_live(client_timeout=10) else "not live"
    except InferenceServerException as exc:
        return f"{exc.status()}: {exc.message()}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca, other = CA(folder, "lab"), CA(folder, "other")
    return {"folder": folder, "ca": ca, "other": other,
            "server": ca.issue("gpu07", ips=[ADDRESS]), "client": ca.issue("tritonfleet", client=True),
            "other_server": other.issue("gpu07-other", ips=[ADDRESS])}


@pytest.fixture(scope="module")
def tls_deploy(lab, pki, tmp_path_factory):
    """gpu07 reset and deployed with gRPC TLS; afterwards started again without TLS."""
    ensure_mine((HOST,))
    lab.reset(HOST)
    folder = tmp_path_factory.mktemp("inv")
    inventory = write_inventory(folder / "tls.yml", {HOST: {}}, lab_vars=tls_vars(pki["server"], pki["ca"]))
    proc, report, seconds = run("deploy", inventory)
    assert proc.returncode == 0, show(proc)
    yield {"inventory": inventory, "report": report, "proc": proc, "folder": folder, "seconds": seconds}
    plain = write_inventory(folder / "plain.yml", {HOST: {}})
    restore, _, _ = run("start", plain)
    assert restore.returncode == 0, show(restore)


def key_bodies(pki) -> list[str]:
    return [line for issued in (pki["server"], pki["client"]) for line in issued.key.read_text().splitlines()
            if "-----" not in line]


def test_grpc_tls_and_mutual_tls_on_a_lab_host(tls_deploy, pki, fault_log):
    inventory, report, folder = tls_deploy["inventory"], tls_deploy["report"], tls_deploy["folder"]
    outputs = [tls_deploy["proc"].stdout + tls_deploy["proc"].stderr]

    # 1. TLS: the files, the flags, the smoke test over gRPC TLS
    pushed = step(report, "grpc_tls")
    assert pushed["status"] == "changed" and "write /etc/tritonfleet/tls/server.key" in pushed["msg"], pushed
    smoke = step(report, "smoke")
    assert smoke["status"] == "ok" and "/-" not in smoke["msg"], smoke  # a gRPC latency for every model
    modes = on_host(HOST, f"stat -c '%n %U:%G %a' {tls.HOST_DIR} {tls.HOST_DIR}/*").splitlines()
    assert sorted(modes) == sorted([f"{tls.HOST_DIR} root:triton 750", f"{tls.HOST_DIR}/ca.crt root:triton 640",
                                    f"{tls.HOST_DIR}/server.crt root:triton 640",
                                    f"{tls.HOST_DIR}/server.key root:triton 640"]), modes
    assert on_host(HOST, f"sha256sum < {tls.HOST_DIR}/server.key").split()[0] == \
        __import__("hashlib").sha256(pki["server"].key.read_bytes()).hexdigest()
    cmdline = on_host(HOST, "tr '\\0' ' ' < /proc/$(systemctl show tritonserver -p MainPID --value)/cmdline")
    assert "--grpc-use-ssl=true" in cmdline and "--grpc-use-ssl-mutual" not in cmdline, cmdline
    assert on_host(HOST, "su -s /bin/sh triton -c 'cat /etc/tritonfleet/tls/server.key' >/dev/null && echo readable")\
        == "readable"
    assert on_host(HOST, "su -s /bin/sh nobody -c 'cat /etc/tritonfleet/tls/server.key' 2>&1 || true") \
        .endswith("Permission denied")
    plaintext = grpc_live()
    assert plaintext.startswith("StatusCode.UNAVAILABLE"), plaintext  # the server speaks only TLS on gRPC
    assert grpc_live(ssl=True, root_certificates=str(pki["ca"].cert)) == "live"

    again, again_report, _ = run("deploy", inventory)
    outputs.append(again.stdout + again.stderr)
    assert again.returncode == 0 and again_report["changed"] == 0, show(again)
    assert step(again_report, "grpc_tls")["status"] == "ok"

    # 2. the control machine trusts another CA than the one that issued the host's certificate
    mismatched = write_inventory(folder / "other-ca.yml", {HOST: {}},
                                 lab_vars=tls_vars(pki["other_server"], pki["other"]))
    wrong, wrong_report, wrong_seconds = run("smoke", mismatched)
    outputs.append(wrong.stdout + wrong.stderr)
    wrong_msg = step(wrong_report, "smoke")["msg"]
    assert wrong.returncode == 1 and wrong_seconds < 60, show(wrong)
    assert "over TLS does not answer" in wrong_msg and "CERTIFICATE_VERIFY_FAILED" in wrong_msg, wrong_msg
    assert "triton_grpc_tls_ca must be the CA that issued" in wrong_msg, wrong_msg
    # and an inventory whose CA did not sign its own certificate is refused before the host is touched
    refused, _, _ = run("smoke", write_inventory(folder / "bad.yml", {HOST: {}}, lab_vars=tls_vars(
        pki["server"], pki["other"])))
    assert refused.returncode == 2 and "is not signed by triton_grpc_tls_ca" in refused.stderr, show(refused)

    # 3. mutual TLS: the same host, now requiring a client certificate the CA signed
    mutual = write_inventory(folder / "mutual.yml", {HOST: {}},
                             lab_vars=tls_vars(pki["server"], pki["ca"], pki["client"]))
    started, started_report, _ = run("start", mutual)
    outputs.append(started.stdout + started.stderr)
    assert started.returncode == 0, show(started)
    assert step(started_report, "grpc_tls")["status"] == "ok"  # same files; the unit's flags changed
    assert step(started_report, "template")["status"] == "changed"
    smoked, smoked_report, _ = run("smoke", mutual)
    outputs.append(smoked.stdout + smoked.stderr)
    assert smoked.returncode == 0 and "/-" not in step(smoked_report, "smoke")["msg"], show(smoked)
    cmdline = on_host(HOST, "tr '\\0' ' ' < /proc/$(systemctl show tritonserver -p MainPID --value)/cmdline")
    assert "--grpc-use-ssl-mutual=true" in cmdline and "--grpc-root-cert=/etc/tritonfleet/tls/ca.crt" in cmdline
    no_client_cert = grpc_live(ssl=True, root_certificates=str(pki["ca"].cert))
    assert no_client_cert.startswith("StatusCode.UNAVAILABLE"), no_client_cert
    assert "peer did not return a certificate" in on_host(
        HOST, "journalctl -u tritonserver -n 50 --no-pager -o cat")
    tls_only, tls_only_report, tls_only_seconds = run("smoke", inventory)  # TLS without the client certificate
    outputs.append(tls_only.stdout + tls_only.stderr)
    tls_only_msg = step(tls_only_report, "smoke")["msg"]
    assert tls_only.returncode == 1 and "it may require a client certificate (mutual TLS" in tls_only_msg, \
        tls_only_msg
    rerun, rerun_report, _ = run("start", mutual)
    assert rerun.returncode == 0 and rerun_report["changed"] == 0, show(rerun)

    # 4. gRPC on the host's loopback: the smoke test dials 127.0.0.1 through an SSH forward and checks the
    # certificate against the host's address (grpc.ssl_target_name_override)
    loopback = write_inventory(folder / "loopback.yml", {HOST: {"triton_http_address": "127.0.0.1",
                                                               "triton_grpc_address": "127.0.0.1"}},
                               lab_vars=tls_vars(pki["server"], pki["ca"], pki["client"]))
    forwarded, forwarded_report, _ = run("start", loopback)
    assert forwarded.returncode == 0, show(forwarded)
    forwarded_smoke, forwarded_smoke_report, _ = run("smoke", loopback)
    outputs += [forwarded.stdout + forwarded.stderr, forwarded_smoke.stdout + forwarded_smoke.stderr]
    assert forwarded_smoke.returncode == 0 and "/-" not in step(forwarded_smoke_report, "smoke")["msg"], \
        show(forwarded_smoke)

    for body in key_bodies(pki):
        assert not any(body in out for out in outputs), "a private key reached the output"
    wrong_line = next(line for line in wrong_msg.splitlines() if "does not answer" in line)
    fault_log(AREA, f"deploy to gpu07 with `triton_grpc_tls_cert/key/ca` from a CA the test made (the server "
                    f"certificate's subjectAltName IP:{ADDRESS})",
              "deployed and smoke-tested with every model answering over gRPC TLS; /etc/tritonfleet/tls root:triton "
              "0750, its files root:triton 0640 (the service user reads the key, `nobody` gets Permission denied); a "
              "plaintext gRPC client gets UNAVAILABLE; the next deploy changed=0; no key in any output")
    fault_log(AREA, "the control machine trusting another CA than the one that issued the host's certificate "
                    "(`invoke smoke` with another CA's files in the inventory)",
              f"exit 1 in {wrong_seconds:.1f} s: `{wrong_line.strip()}`; an inventory whose CA did not sign its "
              "own certificate: exit 2 before the host is touched")
    fault_log(AREA, "`triton_grpc_tls_mutual: true` with a client certificate the CA signed, then a client without "
                    "one",
              "`invoke start` restarted the server with `--grpc-use-ssl-mutual=true` (the files unchanged), smoke "
              "passed over mutual TLS, the rerun changed=0; without a client certificate gRPC is refused "
              f"(`{no_client_cert.split(';')[0]}: ...: {no_client_cert.rsplit(': ', 1)[-1]}`, the host's journal: "
              f"`peer did not return a certificate`), `invoke smoke` fails in "
              f"{tls_only_seconds:.1f} s saying the server may require a client certificate")
    fault_log(AREA, "mutual TLS with `triton_http_address`/`triton_grpc_address: 127.0.0.1` (the certificate names "
                    f"{ADDRESS}, the smoke test dials 127.0.0.1 through an SSH forward)",
              "smoke passed over mutual TLS: the client checks the certificate against the host's address "
              "(`grpc.ssl_target_name_override`)")


def test_a_key_the_service_user_cannot_read_is_named_not_taken_for_a_busy_port(tls_deploy, fault_log):
    """The host's key made root-only by hand: gRPC cannot start, Triton says the port is 'already in use'."""
    inventory = tls_deploy["inventory"]
    on_host(HOST, f"chmod 0600 {tls.HOST_DIR}/server.key && systemctl restart tritonserver; true")
    wait_for(lambda: "Invalid private key" in on_host(HOST, "journalctl -u tritonserver -n 80 --no-pager -o cat"),
             30, what="tritonserver's TLS error on gpu07")
    doctor, report, _ = run("doctor", inventory)
    assert doctor.returncode == 1, show(doctor)
    findings = {f["signature"]: f for f in report["hosts"][0]["diagnosis"]["findings"] if f["severity"] == "error"}
    assert "grpc_tls_unusable" in findings and "port_in_use" not in findings, findings
    evidence = findings["grpc_tls_unusable"]["evidence"]
    assert any("Invalid private key" in e for e in evidence)
    assert any("already in use" in e for e in evidence)  # Triton's misreport, folded into the real cause
    repaired, repaired_report, _ = run("deploy", inventory)
    assert repaired.returncode == 0, show(repaired)
    assert "server.key" in step(repaired_report, "grpc_tls")["msg"]
    assert on_host(HOST, f"stat -c %a {tls.HOST_DIR}/server.key") == "640"
    fault_log(AREA, "the host's TLS key made unreadable for the service user (`chmod 0600`, owner root)",
              "tritonserver logs `Invalid private key` and then `failed to start GRPC service: ... Socket "
              "'0.0.0.0:8001' already in use` although nothing holds the port (server#5566); `invoke doctor` names the "
              "TLS file, not a busy port; the next deploy restores mode 0640 and serves again")
