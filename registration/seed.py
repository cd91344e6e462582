"""The seed: what a blank device needs to register, written into an image by
``corral image seed`` (or served by the server for a token) and read by the agent at first boot.

``{"server": "https://host:port", "token": "crl1....", "labels": {...},
"hostname_template": "edge-${dmi.product_uuid:8}", "install_disk": "/dev/vda",
"network": {"address": "10.0.0.5/24", "gateway": "10.0.0.1", "dns": ["10.0.0.1"],
"interface": "en*"}}``

Only ``server`` and ``token`` are required. One parser serves both sides, so a seed the
seeder accepts is one the agent accepts.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from registration import templating, tokens
from registration.errors import RegistrationError

#: More than this is not a seed (the image's seed slot is 64 KiB).
MAX_SEED_BYTES = 64 * 1024
MAX_DNS = 3
_DISK = re.compile(r"/dev/[A-Za-z0-9._/:+-]{1,200}")
#: A systemd-networkd ``Name=`` match: an interface name or a glob.
_INTERFACE = re.compile(r"[A-Za-z0-9_.:*?-]{1,32}")


class SeedError(RegistrationError, ValueError):
    """A seed that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Network:
    """A static address for the first boot (DHCP when the seed has none)."""

    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    dns: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    interface: str = "en* eth*"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": str(self.address), "interface": self.interface}
        if self.gateway is not None:
            out["gateway"] = str(self.gateway)
        if self.dns:
            out["dns"] = [str(d) for d in self.dns]
        return out


@dataclass(frozen=True)
class Seed:
    server: str
    token: tokens.RegistrationToken
    labels: dict[str, str] = field(default_factory=dict)
    hostname_template: str | None = None
    install_disk: str | None = None
    network: Network | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"server": self.server, "token": str(self.token)}
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.hostname_template is not None:
            out["hostname_template"] = self.hostname_template
        if self.install_disk is not None:
            out["install_disk"] = self.install_disk
        if self.network is not None:
            out["network"] = self.network.to_dict()
        return out

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()


def check_server(server: object) -> str:
    if not isinstance(server, str):
        raise SeedError("server must be an https:// URL")
    parts = urlsplit(server)
    if parts.scheme != "https" or not parts.hostname:
        raise SeedError(f"server {server!r} must be an https:// URL with a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise SeedError(f"server {server!r} must be a plain https://host[:port] URL")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as e:
        raise SeedError(f"server {server!r}: {e}") from e
    return server.rstrip("/")


def check_network(data: object) -> Network:
    if not isinstance(data, dict):
        raise SeedError("network must be an object with address, gateway, dns, interface")
    unknown = set(data) - {"address", "gateway", "dns", "interface"}
    if unknown:
        raise SeedError(f"network has unknown fields: {', '.join(sorted(unknown))}")
    try:
        address = ipaddress.ip_interface(str(data.get("address", "")))
    except ValueError as e:
        raise SeedError(f"network address must be an IP address with a prefix: {e}") from e
    if "/" not in str(data.get("address")):
        raise SeedError("network address needs a prefix length, e.g. 10.0.0.5/24")
    gateway = None
    if data.get("gateway") is not None:
        try:
            gateway = ipaddress.ip_address(str(data["gateway"]))
        except ValueError as e:
            raise SeedError(f"network gateway: {e}") from e
        if gateway.version != address.version:
            raise SeedError("network gateway and address are of different IP versions")
    dns_in = data.get("dns") or []
    if not isinstance(dns_in, list) or len(dns_in) > MAX_DNS:
        raise SeedError(f"network dns must be a list of at most {MAX_DNS} addresses")
    try:
        dns = tuple(ipaddress.ip_address(str(d)) for d in dns_in)
    except ValueError as e:
        raise SeedError(f"network dns: {e}") from e
    interface = data.get("interface", "en* eth*")
    if not isinstance(interface, str) or not all(
        _INTERFACE.fullmatch(w) for w in interface.split()
    ):
        raise SeedError(f"network interface {interface!r} is not an interface name or glob")
    return Network(address=address, gateway=gateway, dns=dns, interface=interface)


def from_dict(data: object) -> Seed:
    from registration.protocol import check_labels  # pydantic: only where a seed is read

    if not isinstance(data, dict):
        raise SeedError("a seed must be a JSON object")
    unknown = set(data) - {
        "server",
        "token",
        "labels",
        "hostname_template",
        "install_disk",
        "network",
    }
    if unknown:
        raise SeedError(f"seed has unknown fields: {', '.join(sorted(unknown))}")
    server = check_server(data.get("server"))
    try:
        token = tokens.parse(data.get("token"))
    except RegistrationError as e:
        raise SeedError(f"token: {e}") from e
    labels = data.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise SeedError("labels must be an object of strings")
    try:
        labels = check_labels(dict(labels))
    except ValueError as e:
        raise SeedError(f"labels: {e}") from e
    template = data.get("hostname_template")
    if template is not None:
        if not isinstance(template, str) or not 0 < len(template) <= 253:
            raise SeedError("hostname_template must be a string of 1–253 characters")
        try:
            templating.validate(template)
        except RegistrationError as e:
            raise SeedError(str(e)) from e
    disk = data.get("install_disk")
    if disk is not None and (
        not isinstance(disk, str) or not _DISK.fullmatch(disk) or "/../" in f"{disk}/"
    ):
        raise SeedError(f"install_disk {disk!r} must be a device path under /dev/")
    network = check_network(data["network"]) if data.get("network") is not None else None
    return Seed(
        server=server,
        token=token,
        labels=labels,
        hostname_template=template,
        install_disk=disk,
        network=network,
    )


def parse(raw: bytes) -> Seed:
    """A seed from its bytes (trailing spaces, as in the image's seed slot, are fine)."""
    if len(raw) > MAX_SEED_BYTES:
        raise SeedError(f"a seed is at most {MAX_SEED_BYTES} bytes")
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise SeedError(f"seed is not JSON: {e}") from e
    return from_dict(data)


def is_blank(raw: bytes) -> bool:
    """An unseeded slot: ``{}`` (and padding) or nothing at all."""
    return raw.strip() in (b"", b"{}")
