"""The seed document: one parser for the seeder and the agent."""

from __future__ import annotations

import json

import pytest

from registration import seed

TOKEN = "crl1." + "a" * 64 + ".tok12345ab." + "s" * 43


def doc(**extra: object) -> dict[str, object]:
    return {"server": "https://10.0.2.2:8443", "token": TOKEN, **extra}


def test_round_trip_with_every_field_and_slot_padding() -> None:
    full = doc(
        labels={"site": "field-7"},
        hostname_template="edge-${dmi.product_uuid:8}",
        install_disk="/dev/vda",
        network={"address": "10.0.2.50/24", "gateway": "10.0.2.2", "dns": ["10.0.2.3"]},
    )
    parsed = seed.parse(json.dumps(full).encode() + b" " * 1000)
    assert seed.parse(parsed.to_json()) == parsed
    assert parsed.network is not None and str(parsed.network.gateway) == "10.0.2.2"
    assert parsed.to_dict()["network"]["interface"] == "en* eth*"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"server": "http://x:1"}, "https"),
        ({"server": "https://x:99999"}, "(?i)port"),
        ({"token": "crl1.nope"}, "token"),
        ({"labels": {"bad key!": "v"}}, "label"),
        ({"hostname_template": "edge-${oops"}, "placeholder"),
        ({"install_disk": "/etc/passwd"}, "/dev/"),
        ({"install_disk": "/dev/../etc/passwd"}, "/dev/"),
        ({"network": {"address": "10.0.0.5"}}, "prefix"),
        ({"network": {"address": "10.0.0.5/24", "gateway": "fe80::1"}}, "versions"),
        ({"network": {"address": "10.0.0.5/24", "dns": ["1.1.1.1"] * 4}}, "at most 3"),
        ({"network": {"address": "10.0.0.5/24", "interface": "eth0;rm"}}, "interface"),
        ({"extra": 1}, "unknown"),
    ],
)
def test_bad_seeds_name_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(seed.SeedError, match=message):
        seed.from_dict(doc(**fields))


def test_blank_slot_and_size_limit() -> None:
    assert seed.is_blank(b"{}" + b" " * 65534)
    assert not seed.is_blank(json.dumps(doc()).encode())
    with pytest.raises(seed.SeedError, match="at most"):
        seed.parse(b" " * (seed.MAX_SEED_BYTES + 1))
    with pytest.raises(seed.SeedError, match="not JSON"):
        seed.parse(b"{")
