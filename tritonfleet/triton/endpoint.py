"""Where the control machine reaches a host's Triton server: its address, or SSH forwards to its loopback; and
how its gRPC client speaks to it (plaintext, TLS or mutual TLS: `tritonfleet.triton.tls`)."""

from __future__ import annotations

from dataclasses import dataclass

from tritonfleet.triton import layout
from tritonfleet.triton.tls import ClientTls, client_tls


@dataclass(frozen=True)
class Endpoint:
    """Where the control machine reaches a server; `via` says how, for messages ("" when direct); `grpc_tls` what
    its gRPC client needs for TLS (None: plaintext). HTTP is always plaintext: Triton cannot serve it over TLS."""

    address: str
    http_port: int
    grpc_port: int
    via: str = ""
    grpc_tls: ClientTls | None = None

    @property
    def host(self) -> str:
        """The address as it goes in a URL (an IPv6 literal in brackets)."""
        if ":" in self.address and not self.address.startswith("["):
            return f"[{self.address}]"
        return self.address

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def __str__(self) -> str:
        return f"{self.host}:{self.http_port}" + (f" ({self.via})" if self.via else "")


def endpoint_for(address: str, hostvars: dict, conn=None) -> Endpoint:
    """The endpoint of the server a host runs with these vars; a loopback-bound one through SSH forwards on conn.

    With gRPC TLS vars, the gRPC client checks the server's certificate against the address (through a forward,
    against the host's address, not 127.0.0.1; `triton_grpc_tls_server_name` overrides both)."""
    http, grpc = int(hostvars["triton_http_port"]), int(hostvars["triton_grpc_port"])
    if layout.is_loopback(str(hostvars["triton_http_address"])):
        if conn is None:
            raise ValueError("a server bound to the host's loopback is reached through its SSH connection")
        local_http, local_grpc = conn.forward([http, grpc])
        return Endpoint("127.0.0.1", local_http, local_grpc, via=f"SSH forward to {address} loopback:{http}/{grpc}",
                        grpc_tls=client_tls(hostvars, address, via_forward=True))
    return Endpoint(address, http, grpc, grpc_tls=client_tls(hostvars, address))


def short_error(exc: BaseException) -> str:
    """The first line of an exception's text, bounded: what a person reads in a recap."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]
