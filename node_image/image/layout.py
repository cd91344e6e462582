"""The names the image builder, the seeder, the flasher, the installer and the agent agree on.

The base ISO (``corral image build-base``) is a hybrid ISO made by ``grub-mkrescue``::

    /live/vmlinuz, /live/initrd.img      the Debian kernel and initramfs (live-boot)
    /live/filesystem.squashfs            the root: systemd, python3, the agent
    /corral/seed.json                    the seed slot: SEED_SLOT_SIZE bytes of JSON padded
                                         with spaces; "{}" plus spaces when unseeded
    /corral/os-manifest.json             what the squashfs is (version, sha256, size)

An installed disk (``install.disk`` in the seed) is GPT::

    bios-boot          1 MiB   GRUB's core image for BIOS boots
    EFI                vfat    GRUB for UEFI boots (EFI/BOOT/BOOTX64.EFI) and grub.cfg
    corral-state       ext4    grubenv, slots/A, slots/B (root squashfs images); mounted
                               at STATE_MOUNT (``node_image.host.DEFAULT_BOOT``)
    corral-persistent  ext4    the agent's identity and state, K3s data; survives updates
"""

from __future__ import annotations

from pathlib import Path

#: The seed file's path inside the ISO, and its fixed size (the seeder overwrites it in place).
SEED_PATH = "/corral/seed.json"
SEED_SLOT_SIZE = 64 * 1024
#: Padding after the JSON document in the slot (JSON allows trailing whitespace).
SEED_PAD = b" "
#: The manifest of the root squashfs inside the ISO.
OS_MANIFEST_PATH = "/corral/os-manifest.json"
ISO_VOLUME_ID = "CORRAL"

LIVE_KERNEL = "/live/vmlinuz"
LIVE_INITRD = "/live/initrd.img"
LIVE_ROOT = "/live/filesystem.squashfs"
#: Where live-boot mounts the boot medium in the running live system.
LIVE_MEDIUM = Path("/run/live/medium")

#: Filesystem labels of a partition that may carry ``seed.json`` (cloud-init's NoCloud name too).
SEED_LABELS = ("CORRAL", "CIDATA")
#: Kernel command line: ``corral.seed=<path>`` names a seed file.
SEED_CMDLINE_KEY = "corral.seed"

#: GPT partition names (and filesystem labels) of an installed disk, in order.
PART_BIOS = "bios-boot"
PART_EFI = "EFI"
PART_STATE = "corral-state"
PART_PERSISTENT = "corral-persistent"
#: Filesystem labels: the partition names, except where ext4's 16-byte limit cuts one short.
FS_LABELS = {
    PART_EFI: PART_EFI,
    PART_STATE: PART_STATE,
    PART_PERSISTENT: "corral-persist",
}
STATE_MOUNT = Path("/boot/corral")
#: In the root image: the OS version (also recorded in the manifest).
OS_VERSION_FILE = "/etc/corral/os-version"
