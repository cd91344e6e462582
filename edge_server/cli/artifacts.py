"""``corral artifact import|import-k3s|list|show|delete``: the server's artifact mirror."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, get_args

from edge_server.cli import k3s_release, output
from edge_server.cli.client import OperatorClient
from edge_server.cli.errors import CliError
from edge_server.cli.output import Column
from edge_server.cli.progress import Progress, ProgressReader
from registration.artifacts import ArtifactKind

KINDS: tuple[ArtifactKind, ...] = get_args(ArtifactKind)

COLUMNS: list[Column] = [
    ("id", lambda a: a["id"]),
    ("kind", lambda a: a["kind"]),
    ("name", lambda a: a["name"]),
    ("version", lambda a: a["version"]),
    ("arch", lambda a: a["arch"] or "any"),
    ("size", lambda a: output.size(a["size"])),
    ("sha256", lambda a: a["sha256"][:16]),
    ("imported", lambda a: output.when(a["created_at"])),
]


def view(a: dict[str, Any]) -> list[output.Section]:
    return [
        (
            None,
            [
                ("ID", a["id"]),
                ("Kind", a["kind"]),
                ("Name", a["name"]),
                ("Version", a["version"]),
                ("Arch", a["arch"] or "any"),
                ("Size", f"{output.size(a['size'])} ({a['size']} bytes)"),
                ("SHA256", a["sha256"]),
                ("Signature", a["signature"]),
                ("Imported", f"{output.when(a['created_at'])} by {a['created_by']}"),
            ],
        )
    ]


def upload(
    api: OperatorClient,
    path: Path,
    kind: str,
    name: str,
    version: str,
    arch: str | None,
    sha256: str | None = None,
) -> dict[str, Any]:
    """Stream ``path`` to the mirror, with a progress line; the imported artifact."""
    try:
        size = path.stat().st_size
        stream = path.open("rb")
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from e
    progress = Progress(f"{kind} {path.name}", size)
    try:
        with stream:
            answer: dict[str, Any] = api.upload(
                "/api/v1/artifacts",
                ProgressReader(stream, progress),
                size,
                kind=kind,
                name=name,
                version=version,
                arch=arch,
                sha256=sha256,
            )
    finally:
        progress.close()
    return answer


def import_(args: argparse.Namespace, api: OperatorClient) -> None:
    answer = upload(
        api, Path(args.file), args.kind, args.name, args.version, args.arch, args.sha256
    )
    output.emit(answer, args.output, COLUMNS)


def import_k3s(args: argparse.Namespace, api: OperatorClient) -> None:
    """Check every file of the release against its sums file first; then import them. A
    failed import deletes what this run imported, so a release is in the mirror whole or
    not at all."""
    directory = Path(args.source) if args.source else None
    if args.download:
        directory = k3s_release.download(args.version, args.arch, directory)
    if directory is None:
        raise CliError("say where the release is", hint="--from DIR, or --download")
    files = k3s_release.verified(directory, args.arch)
    imported: list[dict[str, Any]] = []
    try:
        for item in files:
            imported.append(
                upload(api, item.path, item.kind, "k3s", args.version, item.arch, item.sha256)
            )
    except CliError:
        for done in imported:
            api.request("DELETE", f"/api/v1/artifacts/{done['id']}")
        raise
    output.emit(imported, args.output, COLUMNS)


def list_(args: argparse.Namespace, api: OperatorClient) -> None:
    answer = api.request("GET", "/api/v1/artifacts", kind=args.kind)
    output.emit(answer["items"], args.output, COLUMNS)


def show(args: argparse.Namespace, api: OperatorClient) -> None:
    output.emit_view(api.request("GET", f"/api/v1/artifacts/{args.id}"), args.output, view)


def delete(args: argparse.Namespace, api: OperatorClient) -> None:
    answer = api.request("DELETE", f"/api/v1/artifacts/{args.id}")
    output.emit(answer, args.output, [("id", lambda a: a["id"]), ("status", lambda a: a["status"])])


def add_parser(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("artifact", help="the artifact mirror (OS images, K3s releases, files)")
    verbs = p.add_subparsers(dest="verb", required=True)
    i = verbs.add_parser("import", parents=[common], help="import a file (signed by the server)")
    i.add_argument("--kind", required=True, choices=KINDS)
    i.add_argument("--name", required=True)
    i.add_argument("--version", required=True)
    i.add_argument("--arch", help="amd64, arm64, …; leave out for every architecture")
    i.add_argument("--sha256", help="refuse the import unless the file hashes to this")
    i.add_argument("file")
    i.set_defaults(func=import_)
    k = verbs.add_parser(
        "import-k3s",
        parents=[common],
        help="import a K3s release (install.sh, k3s, airgap images), checked against its sums",
    )
    k.add_argument("--version", required=True, help="e.g. v1.31.4+k3s1")
    k.add_argument("--from", dest="source", help="a directory holding the release's files")
    k.add_argument("--arch", default="amd64", choices=k3s_release.ARCHES)
    k.add_argument(
        "--download",
        action="store_true",
        help="fetch the release from GitHub first (into --from DIR, or a temporary directory)",
    )
    k.set_defaults(func=import_k3s)
    ls = verbs.add_parser("list", parents=[common], help="list the mirror's artifacts")
    ls.add_argument("--kind", choices=KINDS)
    ls.set_defaults(func=list_)
    for name, func in (("show", show), ("delete", delete)):
        v = verbs.add_parser(name, parents=[common], help=f"{name} an artifact")
        v.add_argument("id")
        v.set_defaults(func=func)
