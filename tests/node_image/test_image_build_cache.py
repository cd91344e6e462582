"""The build cache of ``corral image build-base`` and the recipe it hashes (no image built:
the QEMU tests build and boot the real one)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from node_image.image import build, cache, layout, stages


def test_a_tree_key_changes_with_content_mode_and_links_but_not_pycache(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "__pycache__").mkdir()

    def key() -> str:
        return cache.Key("t").tree("src", tmp_path).hexdigest()

    first = key()
    (tmp_path / "__pycache__" / "a.pyc").write_bytes(b"junk")
    assert key() == first
    (tmp_path / "a.py").write_text("x = 2\n")
    second = key()
    assert second != first
    (tmp_path / "a.py").chmod(0o755)
    assert key() != second
    third = key()
    (tmp_path / "link").symlink_to("a.py")
    assert key() != third


def test_an_entry_is_a_hit_only_once_committed_and_old_ones_are_pruned(tmp_path: Path) -> None:
    c = cache.Cache(tmp_path)
    tmp = c.begin("root", "k1" * 20)
    (tmp / "file").write_text("data")
    assert c.lookup("root", "k1" * 20) is None  # half-built: not a hit
    entry = c.commit("root", "k1" * 20, tmp)
    assert c.lookup("root", "k1" * 20) == entry
    assert (entry / "file").read_text() == "data"
    assert not tmp.exists()
    for i in range(cache.KEEP_PER_STAGE + 1):
        later = c.begin("root", f"k{i + 2}" * 20)
        os.utime(c.commit("root", f"k{i + 2}" * 20, later))
    kept = sorted(p.name for p in c.root.glob("root-*"))
    assert len(kept) == cache.KEEP_PER_STAGE


def test_the_cache_dir_comes_from_corral_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert cache.default_cache_dir() == tmp_path / "elsewhere"


def test_the_recipe_pins_every_dependency_and_keys_stage_one_on_it() -> None:
    recipe = build.read_recipe(build.BuildOptions(out=Path("base.iso")))
    assert "linux-image-amd64" in recipe.packages and "live-boot" in recipe.packages
    assert all("==" in pin for pin in recipe.pins)
    assert any(opt.startswith("path-exclude=/usr/share/doc") for opt in recipe.dpkg_options)
    key = build.rootfs_cache_key(recipe)
    assert key == build.rootfs_cache_key(recipe)
    fewer = build.read_recipe(build.BuildOptions(out=Path("base.iso")))
    object.__setattr__(fewer, "packages", recipe.packages[:-1])
    assert build.rootfs_cache_key(fewer) != key


def test_the_empty_seed_slot_is_an_empty_json_object_of_the_slot_size() -> None:
    slot = stages.empty_seed_slot()
    assert len(slot) == layout.SEED_SLOT_SIZE
    assert json.loads(slot) == {}


def test_an_unpinned_dependency_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\nversion = "1"\ndependencies = ["aiohttp>=3"]\n'
    )
    with pytest.raises(stages.ImageBuildError, match="unpinned dependencies"):
        build.pinned_dependencies(tmp_path / "pyproject.toml")


def test_a_dead_builds_temp_dir_and_its_mounts_are_swept_a_live_ones_kept(tmp_path: Path) -> None:
    import subprocess

    store = cache.Cache(tmp_path)
    store.root.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = store.root / f".root-abc.tmp-{dead.pid}"
    merged = left / ".work" / "merged"
    merged.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(merged)], check=True)
    try:
        (merged / "file").write_text("x")
        mine = store.root / f".root-def.tmp-{os.getpid()}"
        mine.mkdir()
        store.sweep()
        assert not left.exists() and cache.mounts_under(left) == []
        assert mine.is_dir()  # a build that is still running keeps its directory
    finally:
        subprocess.run(["umount", "--lazy", str(merged)], check=False, capture_output=True)
