"""The layers hold: HTTP handlers, the dashboard and the CLI reach the database only through
operations; the dashboard never calls an API handler."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import edge_server

PACKAGE = Path(edge_server.__file__).parent
STORE = "edge_server.store"


def imported_modules(source: str, package: str) -> set[str]:
    """Every module some code in ``package`` imports, as absolute names; an imported name
    counts as a module too (``from edge_server import store``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def store_imports(source: str, package: str) -> list[str]:
    names = imported_modules(source, package)
    return sorted(n for n in names if n == STORE or n.startswith(STORE + "."))


@pytest.mark.parametrize(
    "path",
    sorted(
        [
            *(PACKAGE / "api").glob("*.py"),
            *(PACKAGE / "cli").glob("*.py"),
            *(PACKAGE / "web").glob("*.py"),
        ]
    ),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_handlers_and_cli_do_not_import_the_store(path: Path) -> None:
    package = f"edge_server.{path.parent.name}"
    found = store_imports(path.read_text(), package)
    assert found == [], f"{path} imports {found}; call edge_server.ops instead"


def test_the_check_sees_every_form_of_import() -> None:
    forms = {
        "import edge_server.store.db": ["edge_server.store.db"],
        "from edge_server.store import Store": ["edge_server.store", "edge_server.store.Store"],
        "from edge_server import store": ["edge_server.store"],
        "from ..store import devices": ["edge_server.store", "edge_server.store.devices"],
        "from edge_server import ops": [],
    }
    for source, expected in forms.items():
        assert store_imports(source, "edge_server.api") == expected, source


@pytest.mark.parametrize(
    "path", sorted((PACKAGE / "web").glob("*.py")), ids=lambda p: f"web/{p.name}"
)
def test_the_dashboard_does_not_call_api_handlers(path: Path) -> None:
    names = imported_modules(path.read_text(), "edge_server.web")
    found = sorted(n for n in names if n == "edge_server.api" or n.startswith("edge_server.api."))
    assert found == [], f"{path} imports {found}; call edge_server.ops instead"


ROOT = PACKAGE.parent
#: What each shared or device-side package must never import: the registration library is
#: the server's and the device's both (no web server, no database), and the device's agent
#: checks its documents without pydantic (issue 6: 9 MB of an idle agent's 40 MB).
FORBIDDEN = {
    "registration": ("aiohttp", "sqlite3", "sqlite_utils", "pydantic", "pydantic_core"),
    "node_image": ("pydantic", "pydantic_core"),
}


@pytest.mark.parametrize(
    "path",
    sorted(p for package in FORBIDDEN for p in (ROOT / package).rglob("*.py")),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_shared_and_device_code_does_not_import_server_libraries(path: Path) -> None:
    relative = path.relative_to(ROOT).with_suffix("")
    package = ".".join(relative.parts[:-1])
    forbidden = FORBIDDEN[relative.parts[0]]
    names = imported_modules(path.read_text(), package)
    found = sorted(n for n in names if n.split(".")[0] in forbidden)
    assert found == [], f"{path} imports {found}"
