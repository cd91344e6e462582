"""The stand-ins honour the upstream K3s installer's interface (``tests/fixtures/k3s``).

Each case runs the stand-in ``install.sh`` through ``sh`` on a simulated root, as the
reconciler does, and checks what the upstream script would do: its refusals, the service
chosen by ``K3S_URL``, the files it writes, the systemctl calls it makes or skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.k3s_standins import FIXTURES, installer_runs, path_with_standins, release

SH = shutil.which("sh") or "/bin/sh"


def install(root: Path, path: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": path or path_with_standins(),
        "CORRAL_SIMULATED_ROOT": str(root),
        "INSTALL_K3S_SKIP_DOWNLOAD": "true",
        "INSTALL_K3S_BIN_DIR": str(root / "usr/local/bin"),
        "INSTALL_K3S_SYSTEMD_DIR": str(root / "etc/systemd/system"),
        "INSTALL_K3S_SKIP_SELINUX_RPM": "true",
    }
    return subprocess.run(
        [SH, str(FIXTURES / "install.sh")],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A simulated root with the stand-in k3s staged, as the reconciler stages it."""
    found = release("v1.31.4+k3s1", tmp_path / "rel")
    root = tmp_path / "root"
    (root / "usr/local/bin").mkdir(parents=True)
    shutil.copy2(found.binary, root / "usr/local/bin/k3s")
    return root


def systemctl_calls(root: Path) -> list[str]:
    log = root / "var/log/systemctl.log"
    return [line.split(" ", 1)[1] for line in log.read_text().splitlines()] if log.exists() else []


def test_without_systemctl_on_path_it_exits_at_once(root: Path, tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("env", "date", "mkdir"):  # what runs before the check; no systemctl
        found = shutil.which(tool)
        assert found is not None
        os.symlink(found, tools / tool)
    done = install(root, path=str(tools))
    assert done.returncode == 1
    assert "Can not find systemd or openrc" in done.stderr
    assert not (root / "etc/systemd/system").exists()


def test_skip_download_needs_an_executable_k3s_in_bin_dir(root: Path) -> None:
    (root / "usr/local/bin/k3s").chmod(0o644)
    done = install(root)
    assert done.returncode == 1
    assert f"Executable k3s binary not found at {root}/usr/local/bin/k3s" in done.stderr


def test_k3s_url_must_be_https_and_needs_a_token(root: Path) -> None:
    done = install(root, K3S_URL="http://10.0.0.1:6443", K3S_TOKEN="t")
    assert done.returncode == 1 and "Only https:// URLs are supported" in done.stderr
    done = install(root, K3S_URL="https://10.0.0.1:6443")
    assert done.returncode == 1 and "K3S_TOKEN or K3S_TOKEN_FILE is not defined" in done.stderr


def test_k3s_url_makes_an_agent_service_with_every_k3s_variable_in_its_0600_env_file(
    root: Path,
) -> None:
    done = install(
        root,
        K3S_URL="https://10.0.0.1:6443",
        K3S_TOKEN="K10abc::server:secret",
        K3S_NODE_NAME="dev-1",
        CONTAINERD_LOG_LEVEL="debug",
        INSTALL_K3S_VERSION="v1.31.4+k3s1",
    )
    assert done.returncode == 0, done.stderr
    units = root / "etc/systemd/system"
    env_file = units / "k3s-agent.service.env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert sorted(env_file.read_text().splitlines()) == [
        "CONTAINERD_LOG_LEVEL='debug'",
        "K3S_NODE_NAME='dev-1'",
        "K3S_TOKEN='K10abc::server:secret'",
        "K3S_URL='https://10.0.0.1:6443'",
    ]
    assert "ExecStart=" in (units / "k3s-agent.service").read_text()
    assert not (units / "k3s.service").exists()
    bin_dir = root / "usr/local/bin"
    assert (bin_dir / "k3s-agent-uninstall.sh").exists() and (bin_dir / "k3s-killall.sh").exists()
    assert not (bin_dir / "k3s-uninstall.sh").exists()
    assert systemctl_calls(root) == [
        "disable k3s-agent",
        f"enable {units}/k3s-agent.service",
        "daemon-reload",
        "restart k3s-agent",
    ]
    [run] = installer_runs(root)
    assert run["K3S_TOKEN"] == "K10abc::server:secret"


def test_without_k3s_url_a_server_starts_and_writes_its_node_token(root: Path) -> None:
    assert install(root, K3S_NODE_NAME="dev-0").returncode == 0
    assert (root / "etc/systemd/system/k3s.service").exists()
    assert (root / "usr/local/bin/k3s-uninstall.sh").exists()
    token = root / "var/lib/rancher/k3s/server/node-token"
    assert token.read_text().startswith("K10") and token.stat().st_mode & 0o777 == 0o600
    for link in ("crictl", "ctr"):
        assert os.readlink(root / "usr/local/bin" / link) == "k3s"
    nodes = subprocess.run(
        [str(root / "usr/local/bin/k3s"), "kubectl", "get", "nodes", "dev-0", "--no-headers"],
        env={"CORRAL_SIMULATED_ROOT": str(root), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "dev-0 Ready server" in nodes.stdout


def test_the_unit_under_the_fixed_path_goes_first_and_an_unchanged_install_is_not_restarted(
    root: Path,
) -> None:
    fixed = root / "etc/systemd/system"
    units = root / "srv/units"
    assert install(root, INSTALL_K3S_SYSTEMD_DIR=str(units)).returncode == 0
    (fixed / "k3s.service").unlink()  # what systemctl enable linked there
    (fixed / "k3s.service").write_text("stale")
    (fixed / "k3s.service.env").write_text("stale")
    again = install(root, INSTALL_K3S_SYSTEMD_DIR=str(units))
    assert again.returncode == 0
    assert not (fixed / "k3s.service.env").exists()
    assert (fixed / "k3s.service").resolve() == units / "k3s.service"  # linked anew
    assert "No change detected so skipping service start" in again.stdout
    assert systemctl_calls(root).count("restart k3s") == 1


def test_skip_enable_skip_start_name_and_symlink_are_honoured(root: Path) -> None:
    assert install(root, INSTALL_K3S_SKIP_ENABLE="true", INSTALL_K3S_SYMLINK="skip").returncode == 0
    assert systemctl_calls(root) == ["disable k3s"]
    assert not (root / "usr/local/bin/ctr").exists()
    assert install(root, INSTALL_K3S_SKIP_START="true", INSTALL_K3S_NAME="edge").returncode == 0
    assert (root / "etc/systemd/system/k3s-edge.service").exists()
    assert (root / "usr/local/bin/k3s-edge-uninstall.sh").exists()
    assert systemctl_calls(root)[1:] == [
        "disable k3s-edge",
        f"enable {root}/etc/systemd/system/k3s-edge.service",
        "daemon-reload",
    ]


def test_kubectl_delete_is_recorded(root: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "bundle.yaml"
    manifest.write_text("kind: ConfigMap\n")
    done = subprocess.run(
        [str(root / "usr/local/bin/k3s"), "kubectl", "delete", "-f", str(manifest)],
        env={"CORRAL_SIMULATED_ROOT": str(root), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(manifest) in done.stdout
    log = (root / "var/log/k3s-kubectl.log").read_text().splitlines()
    assert log == [f"delete -f {manifest}"]
