"""The install step finds the seed the way the first boot did: the unit runs the agent with
``--seed auto``, so the live medium's seed slot is where ``install_disk`` comes from."""

from __future__ import annotations

from pathlib import Path

from node_image.agent.install import wanted_disk
from node_image.host import SimulatedHost
from node_image.image import layout, seedslot
from registration import seed as seed_doc

TOKEN = "crl1." + "a" * 64 + ".tok12345ab." + "s" * 43


def test_install_disk_comes_from_the_live_mediums_seed_with_seed_auto(tmp_path: Path) -> None:
    host = SimulatedHost(tmp_path / "device")
    medium = host.resolve(str(layout.LIVE_MEDIUM))
    slot = medium / layout.SEED_PATH.lstrip("/")
    slot.parent.mkdir(parents=True)
    document = {"server": "https://10.0.2.100:8443", "token": TOKEN, "install_disk": "/dev/vda"}
    slot.write_bytes(seedslot.render(seed_doc.from_dict(document)))

    # Not a live boot (no root image on the medium): nothing to install.
    assert wanted_disk("auto", medium, host) is None
    root = medium / layout.LIVE_ROOT.lstrip("/")
    root.parent.mkdir(parents=True)
    root.write_bytes(b"squashfs")
    assert wanted_disk("auto", medium, host) == "/dev/vda"
    assert wanted_disk(None, medium, host) is None  # no seed asked for: a plain run
    slot.write_bytes(b"{}" + b" " * (layout.SEED_SLOT_SIZE - 2))  # an unseeded image
    assert wanted_disk("auto", medium, host) is None
