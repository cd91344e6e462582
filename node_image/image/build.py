"""``corral image build-base``: the base ISO and the OS update artifact, stage by cached stage.

:func:`build_base` reads as its table of contents: the recipe, then each stage looked up in
the cache by the hash of its inputs and built only on a miss, then the outputs copied next to
``--out``::

    base.iso            the hybrid ISO (BIOS and UEFI, CD or USB)
    base.os.squashfs    the root squashfs: the OS update artifact (A/B slot image)
    base.os.json        its manifest: version, sha256, size
"""

from __future__ import annotations

import os
import shutil
import subprocess  # noqa: S404 - pip builds the wheel
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from node_image.image import cache as cache_mod
from node_image.image import stages
from node_image.image.stages import ImageBuildError, Log, Recipe, RootInputs

#: The repository this build packs (the wheel's source and the recipe in ``build/``).
REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
#: zstd level of the root squashfs: every code change rebuilds it, so fast beats smallest.
SQUASHFS_LEVEL = 6
#: Bumped when a stage's steps change in a way its inputs do not show.
STAGE_RECIPES = {"rootfs": "1", "root": "2", "iso": "1"}
SOURCE_PACKAGES = ("registration", "edge_server", "node_image")


@dataclass(frozen=True)
class BuildOptions:
    out: Path
    os_version: str | None = None
    overlay: Path | None = None
    cache_dir: Path | None = None
    repo: Path = REPO


@dataclass(frozen=True)
class StepReport:
    name: str
    seconds: float
    cached: bool


@dataclass
class BuildResult:
    iso: Path
    os_image: Path
    os_manifest: Path
    version: str
    steps: list[StepReport] = field(default_factory=list)

    @property
    def iso_size(self) -> int:
        return self.iso.stat().st_size


#: Called as each step starts (``done=None``) and ends (``done=StepReport``).
OnStep = Callable[[str, StepReport | None], None]


def build_base(options: BuildOptions, on_step: OnStep | None = None) -> BuildResult:
    notify: OnStep = on_step or (lambda name, done: None)
    recipe = read_recipe(options)
    cache = cache_mod.Cache(options.cache_dir or cache_mod.default_cache_dir())
    log = Log(cache.root / "build.log")
    steps: list[StepReport] = []

    # The three stages, each keyed by everything that goes into it.
    rootfs_key = rootfs_cache_key(recipe)
    rootfs = _run_step(
        "rootfs", rootfs_key, cache, notify, steps, lambda d: stages.build_rootfs(recipe, d, log)
    )

    source_key = source_cache_key(options.repo)
    version = options.os_version or default_version(options.repo, source_key)
    root_key = root_cache_key(recipe, rootfs_key, source_key, version)

    def build_root(d: Path) -> None:
        work = d / ".work"
        wheel_dir = work / "wheel"
        try:
            build_wheel(options.repo, wheel_dir, log)
            inputs = RootInputs(wheel_dir, version, int(time.time()))
            stages.build_root_image(recipe, rootfs / "rootfs", inputs, d, work, log)
        finally:
            cache_mod.remove_tree(work)

    root = _run_step("root", root_key, cache, notify, steps, build_root)

    iso_key = cache_mod.Key("iso").text("recipe", STAGE_RECIPES["iso"]).text("root", root_key)
    iso_key.data("grub", recipe.grub_cfg.read_bytes())

    def build_iso(d: Path) -> None:
        work = d / ".work"
        try:
            stages.build_iso(recipe, root, d, work, log)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    iso = _run_step("iso", iso_key.hexdigest(), cache, notify, steps, build_iso)

    notify("outputs", None)
    start = time.monotonic()
    result = write_outputs(options.out, iso / "base.iso", root, version)
    steps.append(StepReport("outputs", time.monotonic() - start, cached=False))
    notify("outputs", steps[-1])
    result.steps = steps
    return result


def _run_step(
    name: str,
    key: str,
    cache: cache_mod.Cache,
    notify: OnStep,
    steps: list[StepReport],
    build: Callable[[Path], None],
) -> Path:
    notify(name, None)
    start = time.monotonic()
    hit = cache.lookup(name, key)
    cached = hit is not None
    if hit is None:
        stages.check_tools()
        tmp = cache.begin(name, key)
        try:
            build(tmp)
        except BaseException:
            cache_mod.remove_tree(tmp)
            raise
        hit = cache.commit(name, key, tmp)
    steps.append(StepReport(name, time.monotonic() - start, cached))
    notify(name, steps[-1])
    return hit


def read_recipe(options: BuildOptions) -> Recipe:
    build_dir = options.repo / "build"
    return Recipe(
        suite=SUITE,
        packages=tuple(_lines(build_dir / "packages.txt")),
        dpkg_options=tuple(_lines(build_dir / "dpkg-excludes.txt")),
        initramfs_conf=build_dir / "initramfs.conf",
        pins=pinned_dependencies(options.repo / "pyproject.toml"),
        overlay=options.overlay or build_dir / "overlay",
        agent_unit=build_dir / "systemd" / stages.AGENT_UNIT,
        grub_cfg=build_dir / "grub" / "live.cfg",
        squashfs_level=SQUASHFS_LEVEL,
    )


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ImageBuildError(f"cannot read the recipe file {path}: {e.strerror}") from e
    return [s for line in text.splitlines() if (s := line.split("#", 1)[0].strip())]


def pinned_dependencies(pyproject: Path) -> tuple[str, ...]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    pins = tuple(str(d) for d in project["dependencies"])
    loose = [p for p in pins if "==" not in p]
    if loose:
        raise ImageBuildError(f"unpinned dependencies in {pyproject}: {', '.join(loose)}")
    return pins


def rootfs_cache_key(recipe: Recipe) -> str:
    key = cache_mod.Key("rootfs").text("recipe", STAGE_RECIPES["rootfs"])
    key.text("suite", recipe.suite).text("packages", "\n".join(recipe.packages))
    key.text("dpkg", "\n".join(recipe.dpkg_options)).text("pins", "\n".join(recipe.pins))
    key.data("initramfs", recipe.initramfs_conf.read_bytes())
    return key.hexdigest()


def source_cache_key(repo: Path) -> str:
    key = cache_mod.Key("source").data("pyproject", (repo / "pyproject.toml").read_bytes())
    for package in SOURCE_PACKAGES:
        key.tree(package, repo / package, suffixes=(".py", ".typed", ".json", ".html", ".css"))
    return key.hexdigest()


def root_cache_key(recipe: Recipe, rootfs_key: str, source_key: str, version: str) -> str:
    key = cache_mod.Key("root").text("recipe", STAGE_RECIPES["root"])
    key.text("rootfs", rootfs_key).text("source", source_key).text("version", version)
    key.tree("overlay", recipe.overlay).data("unit", recipe.agent_unit.read_bytes())
    key.text("level", str(recipe.squashfs_level))
    return key.hexdigest()


def default_version(repo: Path, source_key: str) -> str:
    """``<package version>+<source hash>``: a new version whenever the code changes."""
    with open(repo / "pyproject.toml", "rb") as f:
        base = str(tomllib.load(f)["project"]["version"])
    return f"{base}+{source_key[:10]}"


def build_wheel(repo: Path, dest: Path, log: Log) -> None:
    """This repo's own wheel, without dependencies (they are in stage 1's venv).

    Built from a copy of the packages, so setuptools' ``build/`` and ``*.egg-info`` never
    land in the source tree (whose ``build/`` is the image recipe).
    """
    src = dest / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        if (repo / name).is_file():
            shutil.copyfile(repo / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in SOURCE_PACKAGES:
        shutil.copytree(repo / package, src / package, ignore=ignore)
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dest), str(src)]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    with open(log.path, "ab") as f:
        f.write(f"\n$ {' '.join(argv)}\n".encode())
        f.flush()
        done = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)  # noqa: S603
    shutil.rmtree(src)
    if done.returncode != 0:
        raise ImageBuildError(f"pip wheel of {repo} failed (log: {log.path})")


def write_outputs(out: Path, iso: Path, root: Path, version: str) -> BuildResult:
    """The ISO at ``out``; the OS image and its manifest beside it (``<stem>.os.*``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    os_image = out.with_name(f"{out.stem}.os.squashfs")
    os_manifest = out.with_name(f"{out.stem}.os.json")
    for src, dest in (
        (iso, out),
        (root / "filesystem.squashfs", os_image),
        (root / "manifest.json", os_manifest),
    ):
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return BuildResult(iso=out, os_image=os_image, os_manifest=os_manifest, version=version)
