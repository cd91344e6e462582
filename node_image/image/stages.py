"""The three stages of ``corral image build-base``, each a flat list of named steps.

1. :func:`build_rootfs`: a Debian root by mmdebstrap (kernel, live-boot, systemd, python3)
   and a venv holding the agent's pinned third-party dependencies.
2. :func:`build_root_image`: this repo's wheel into that venv, the overlay files, the agent's
   unit, the version, health-check and build-time files, then the root squashfs. ``/boot``
   stays inside it: the same squashfs is the A/B slot image an installed disk boots.
3. :func:`build_iso`: a hybrid ISO (BIOS and UEFI, CD or USB) by grub-mkrescue.

Every command's output goes to the build log; a failing one raises :class:`ImageBuildError`
naming it and the end of its output.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess  # noqa: S404 - the build runs Debian's tools
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from node_image.errors import AgentError
from node_image.image import layout
from node_image.image.cache import mounts_under

VENV = "/opt/corral/venv"
#: Tools the stages run, checked before anything starts.
TOOLS = ("mmdebstrap", "mksquashfs", "grub-mkrescue", "xorriso", "mount", "umount", "chroot")
#: PATH inside the chroot (``env -i`` keeps the host's pip settings out of it).
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
#: Inside the rootfs for the length of a pip run only (the host's CA reaches the registries).
CHROOT_CA = "/root/corral-build-ca.crt"
#: The live system reads the seed from the boot medium until the agent finds it itself.
SEED_LINK = "/etc/corral/seed.json"
BUILD_TIME_FILE = "/etc/corral/build-time"
HEALTH_CHECK_FILE = "/etc/corral/health-check"
AGENT_UNIT = "corral-agent.service"
ENABLED_UNITS = ("systemd-networkd.service", "systemd-timesyncd.service", AGENT_UNIT)
#: Debian's housekeeping that an appliance does not want: apt and dpkg timers (the device
#: never installs packages; its OS comes as A/B images) and e2scrub (LVM snapshots, which
#: the device has none of). Each is a process start in the boot's critical minute.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
)
TAIL = 3000


class ImageBuildError(AgentError):
    """A build step failed; the message names the command and the end of its output."""


@dataclass(frozen=True)
class Recipe:
    """Stage inputs read from ``build/`` and ``pyproject.toml``."""

    suite: str
    packages: tuple[str, ...]
    dpkg_options: tuple[str, ...]
    initramfs_conf: Path
    pins: tuple[str, ...]
    overlay: Path
    agent_unit: Path
    grub_cfg: Path
    squashfs_level: int


class Log:
    """The build log: every command and its output, appended to one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def run(self, argv: Sequence[str], *, cwd: Path | None = None) -> None:
        with open(self.path, "ab") as f:
            f.write(f"\n$ {shlex.join(argv)}\n".encode())
            f.flush()
            start = f.tell()
            try:
                done = subprocess.run(  # noqa: S603 - argv built by the stages
                    list(argv), stdout=f, stderr=subprocess.STDOUT, cwd=cwd, check=False
                )
            except FileNotFoundError as e:
                raise ImageBuildError(f"{argv[0]}: not installed ({e.strerror})") from e
        if done.returncode != 0:
            with open(self.path, "rb") as f:
                f.seek(start)
                tail = f.read()[-TAIL:].decode(errors="replace").strip()
            raise ImageBuildError(
                f"{shlex.join(argv)}: exit code {done.returncode}\n{tail}\n(log: {self.path})"
            )


def check_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise ImageBuildError(
            f"missing build tools: {', '.join(missing)} (install them with scripts/setup.sh "
            "or apt-get install mmdebstrap squashfs-tools xorriso grub-pc-bin grub-efi-amd64-bin "
            "mtools)"
        )
    if os.geteuid() != 0:
        raise ImageBuildError("building the image needs root (mmdebstrap, chroot, mounts)")


# --- stage 1: the Debian root and the venv ----------------------------------------------


def build_rootfs(recipe: Recipe, out: Path, log: Log) -> None:
    """``out/rootfs``: Debian by mmdebstrap plus the venv of pinned dependencies."""
    rootfs = out / "rootfs"
    _mmdebstrap(recipe, rootfs, log)
    _install_venv(recipe, rootfs, log)
    _clean_rootfs(rootfs)


def _mmdebstrap(recipe: Recipe, rootfs: Path, log: Log) -> None:
    argv = [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        f"--include={','.join(recipe.packages)}",
        *(f"--dpkgopt={opt}" for opt in recipe.dpkg_options),
        # In place before the kernel's packages build the first initramfs.
        f'--essential-hook=mkdir -p "$1/etc/initramfs-tools/conf.d" && cp '
        f'{shlex.quote(str(recipe.initramfs_conf))} "$1/etc/initramfs-tools/conf.d/corral.conf"',
        recipe.suite,
        str(rootfs),
    ]
    log.run(argv)


def _install_venv(recipe: Recipe, rootfs: Path, log: Log) -> None:
    with chroot_mounts(rootfs, log):
        log.run(_in_chroot(rootfs, ["python3", "-m", "venv", VENV]))
        log.run(_in_chroot(rootfs, [f"{VENV}/bin/pip", "install", *_PIP_FLAGS, *recipe.pins]))


_PIP_FLAGS = ("--no-cache-dir", "--disable-pip-version-check", "--no-input")


def _clean_rootfs(rootfs: Path) -> None:
    """What mmdebstrap leaves from the host (resolv.conf, hostname) and any pip leftovers."""
    for rel in ("etc/resolv.conf", "etc/hostname", CHROOT_CA.lstrip("/")):
        path = rootfs / rel
        if path.is_symlink() or path.exists():
            path.unlink()
    (rootfs / "etc/hostname").write_text("corral\n")


def _in_chroot(rootfs: Path, argv: Sequence[str]) -> list[str]:
    env = [f"PATH={CHROOT_PATH}", "HOME=/root", "LANG=C.UTF-8", f"PIP_CERT={CHROOT_CA}"]
    return ["chroot", str(rootfs), "env", "-i", *env, *argv]


@contextmanager
def chroot_mounts(rootfs: Path, log: Log) -> Iterator[None]:
    """proc, sys and dev mounted, the host's resolv.conf and CA bundle copied in; all undone."""
    resolv = rootfs / "etc/resolv.conf"
    saved = resolv.read_bytes() if resolv.is_file() and not resolv.is_symlink() else None
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    shutil.copyfile("/etc/resolv.conf", resolv)
    shutil.copyfile(HOST_CA_BUNDLE, rootfs / CHROOT_CA.lstrip("/"))
    try:
        log.run(["mount", "-t", "proc", "proc", str(rootfs / "proc")])
        log.run(["mount", "-t", "sysfs", "sysfs", str(rootfs / "sys")])
        log.run(["mount", "--bind", "/dev", str(rootfs / "dev")])
        yield
    finally:
        for point in mounts_under(rootfs):
            if Path(point) != rootfs.resolve():  # an overlay mount of the root itself stays
                log.run(["umount", "--lazy", point])
        (rootfs / CHROOT_CA.lstrip("/")).unlink(missing_ok=True)
        resolv.unlink(missing_ok=True)
        if saved is not None:
            resolv.write_bytes(saved)


# --- stage 2: the agent, the overlay and the root squashfs -------------------------------


@dataclass(frozen=True)
class RootInputs:
    wheel_dir: Path
    version: str
    build_time: int


def build_root_image(
    recipe: Recipe, rootfs: Path, inputs: RootInputs, out: Path, work: Path, log: Log
) -> None:
    """``out/filesystem.squashfs`` + ``vmlinuz`` + ``initrd.img`` + ``manifest.json``.

    The stage-1 root is the lower layer of an overlay mount, so it is never copied or
    changed; this stage's files land in the upper layer.
    """
    merged = work / "merged"
    with overlay_mount(rootfs, work, log):
        _install_agent(merged, inputs.wheel_dir, log)
        _copy_overlay(recipe.overlay, merged)
        _install_unit(recipe.agent_unit, merged, log)
        _write_identity(merged, inputs)
        _byte_compile(merged, log)
        _update_initramfs(merged, log)
        _copy_boot_files(merged, out)
        _mksquashfs(merged, out / "filesystem.squashfs", recipe.squashfs_level, log)
    write_manifest(out / "filesystem.squashfs", inputs.version, out / "manifest.json")


@contextmanager
def overlay_mount(lower: Path, work: Path, log: Log) -> Iterator[None]:
    for name in ("upper", "work", "merged"):
        (work / name).mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={lower},upperdir={work / 'upper'},workdir={work / 'work'}"
    log.run(["mount", "-t", "overlay", "overlay", "-o", options, str(work / "merged")])
    try:
        yield
    finally:
        for point in mounts_under(work / "merged"):
            log.run(["umount", "--lazy", point])


def _install_agent(root: Path, wheel_dir: Path, log: Log) -> None:
    wheels = sorted(wheel_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise ImageBuildError(f"expected one wheel in {wheel_dir}, found {len(wheels)}")
    inside = Path("/root") / wheels[0].name
    shutil.copyfile(wheels[0], root / inside.relative_to("/"))
    try:
        with chroot_mounts(root, log):
            argv = [f"{VENV}/bin/pip", "install", *_PIP_FLAGS, "--no-deps", str(inside)]
            log.run(_in_chroot(root, argv))
    finally:
        (root / inside.relative_to("/")).unlink(missing_ok=True)
    _drop_installers(root)
    for name in ("corral-agent", "corral"):
        link = root / "usr/bin" / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(f"{VENV}/bin/{name}")


#: What only installing packages needs; the device never does (about 25 MB).
INSTALLER_PATHS = (
    f"{VENV}/bin/pip",
    f"{VENV}/bin/pip3",
    f"{VENV}/bin/pip3.11",
    "/usr/share/python-wheels",
)
INSTALLER_PACKAGES = (
    "pip",
    "setuptools",
    "pkg_resources",
    "_distutils_hack",
    "distutils-precedence.pth",
)


def _drop_installers(root: Path) -> None:
    site = next((root / VENV.lstrip("/") / "lib").glob("python3*/site-packages"))
    paths = [root / p.lstrip("/") for p in INSTALLER_PATHS]
    for name in INSTALLER_PACKAGES:
        paths += [site / name, *site.glob(f"{name}-*.dist-info")]
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.is_symlink() or path.exists():
            path.unlink()


#: Where the image's Python code lives: Debian's modules, the standard library (whatever
#: the suite's version: ``/usr/lib/python3.X``), the agent's venv.
PYTHON_TREES = ("/usr/lib/python3", "/usr/lib/python3.*", f"{VENV}/lib")

#: Run by the image's own python3 (its bytecode magic): each ``X.cpython-311.pyc`` that pip
#: or Debian wrote becomes ``X.cpython-311.opt-2.pyc``, the file that an interpreter with
#: PYTHONOPTIMIZE=2 (the agent's unit) imports. Without it, every boot compiled each module
#: the agent imported from source: tens of seconds under QEMU TCG. The hash in each file is
#: not checked against its source (the root is a read-only squashfs, so no stat per import).
_BYTE_COMPILE = """
import pathlib, py_compile, sys
mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
done = 0
for tree in sys.argv[1:]:
    for pyc in sorted(pathlib.Path(tree).rglob("__pycache__/*.pyc")):
        if ".opt-" in pyc.name:
            continue
        source = pyc.parent.parent / (pyc.name.split(".", 1)[0] + ".py")
        if not source.is_file():
            continue
        py_compile.compile(str(source), optimize=2, invalidation_mode=mode, doraise=True)
        pyc.unlink()
        done += 1
print(f"{done} modules compiled for PYTHONOPTIMIZE=2")
"""


def _byte_compile(root: Path, log: Log) -> None:
    trees = sorted(
        "/" + str(found.relative_to(root))
        for pattern in PYTHON_TREES
        for found in root.glob(pattern.lstrip("/"))
        if found.is_dir()
    )
    with chroot_mounts(root, log):
        log.run(_in_chroot(root, ["/usr/bin/python3", "-c", _BYTE_COMPILE, *trees]))


def _copy_overlay(overlay: Path, root: Path) -> None:
    if overlay.is_dir():
        shutil.copytree(overlay, root, symlinks=True, dirs_exist_ok=True)
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    # systemd-resolved is not installed: networkd's DHCP DNS goes nowhere without this link
    # target; an empty file keeps Python's resolver quiet until the agent writes one.
    resolv.write_text("")


def _install_unit(unit: Path, root: Path, log: Log) -> None:
    dest = root / "etc/systemd/system" / AGENT_UNIT
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(unit, dest)
    log.run(["chroot", str(root), "systemctl", "enable", *ENABLED_UNITS])
    log.run(["chroot", str(root), "systemctl", "mask", *MASKED_UNITS])
    seed = root / SEED_LINK.lstrip("/")
    seed.parent.mkdir(parents=True, exist_ok=True)
    if seed.is_symlink() or seed.exists():
        seed.unlink()
    seed.symlink_to(layout.LIVE_MEDIUM / layout.SEED_PATH.lstrip("/"))


def _write_identity(root: Path, inputs: RootInputs) -> None:
    etc = root / "etc/corral"
    etc.mkdir(parents=True, exist_ok=True)
    (root / layout.OS_VERSION_FILE.lstrip("/")).write_text(inputs.version + "\n")
    (root / BUILD_TIME_FILE.lstrip("/")).write_text(f"{inputs.build_time}\n")
    check = root / HEALTH_CHECK_FILE.lstrip("/")
    if not check.is_file():
        raise ImageBuildError(f"the overlay has no {HEALTH_CHECK_FILE}")
    check.chmod(0o755)


def _update_initramfs(root: Path, log: Log) -> None:
    """Rebuild the initramfs with the overlay's initramfs-tools files (the ``boot=corral``
    script an installed disk boots with, see node_image/installer.py)."""
    with chroot_mounts(root, log):
        log.run(_in_chroot(root, ["update-initramfs", "-u", "-k", "all"]))


def _copy_boot_files(root: Path, out: Path) -> None:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise ImageBuildError("the root has no kernel or initramfs under /boot")
    shutil.copyfile(kernels[-1], out / "vmlinuz")
    shutil.copyfile(initrds[-1], out / "initrd.img")


def _mksquashfs(root: Path, dest: Path, level: int, log: Log) -> None:
    for rel in ("tmp", "var/tmp", "var/cache/apt", "var/lib/apt/lists"):
        d = root / rel
        if d.is_dir():
            for child in d.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    # gzip, not zstd: this squashfs is also an installed disk's A/B slot, and GRUB 2.06
    # (bookworm) reads only gzip, lzo and xz squashfs when it loads the kernel from a slot.
    argv = ["mksquashfs", str(root), str(dest), "-noappend", "-comp", "gzip"]
    argv += ["-Xcompression-level", str(level), "-no-progress", "-quiet"]
    log.run(argv)


def write_manifest(squashfs: Path, version: str, dest: Path) -> dict[str, object]:
    import hashlib

    h = hashlib.sha256()
    with open(squashfs, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    manifest: dict[str, object] = {
        "version": version,
        "sha256": h.hexdigest(),
        "size": squashfs.stat().st_size,
        "arch": "amd64",
        "built": int(time.time()),
    }
    dest.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# --- stage 3: the hybrid ISO ------------------------------------------------------------


def build_iso(recipe: Recipe, root_image: Path, out: Path, work: Path, log: Log) -> None:
    """``out/base.iso``: grub-mkrescue over /live, /boot/grub/grub.cfg and /corral."""
    tree = work / "iso"
    live = tree / layout.LIVE_ROOT.lstrip("/")
    live.parent.mkdir(parents=True)
    _link_or_copy(root_image / "filesystem.squashfs", live)
    _link_or_copy(root_image / "vmlinuz", tree / layout.LIVE_KERNEL.lstrip("/"))
    _link_or_copy(root_image / "initrd.img", tree / layout.LIVE_INITRD.lstrip("/"))
    grub = tree / "boot/grub/grub.cfg"
    grub.parent.mkdir(parents=True)
    shutil.copyfile(recipe.grub_cfg, grub)
    seed = tree / layout.SEED_PATH.lstrip("/")
    seed.parent.mkdir(parents=True)
    seed.write_bytes(empty_seed_slot())
    shutil.copyfile(root_image / "manifest.json", tree / layout.OS_MANIFEST_PATH.lstrip("/"))
    argv = ["grub-mkrescue", "-o", str(out / "base.iso"), str(tree)]
    log.run([*argv, "--", "-volid", layout.ISO_VOLUME_ID])


def empty_seed_slot() -> bytes:
    body = b"{}"
    return body + layout.SEED_PAD * (layout.SEED_SLOT_SIZE - len(body))


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
