"""``napari-ritm weights list|fetch|import``: the weights sub-commands of the CLI.

Handlers raise :class:`~napari_ritm.errors.RitmError` for user errors; the main CLI prints those
as one line and exits with 2. Importing this module loads argparse only.
"""

from __future__ import annotations

import argparse

from .cache import CACHE_ENV, get_cache_dir
from .download import fetch_weights
from .importing import import_weights
from .registry import (
    DEFAULT_MODEL,
    URL_ENV,
    VERIFIED_LOAD,
    VERIFIED_SHA256,
    VERIFIED_SIZE_LOAD,
    list_weights,
)

__all__ = ["register_cli"]

_VERIFICATION_NOTES = {
    VERIFIED_SHA256: "the file's sha256 is recorded and checked on every load",
    VERIFIED_SIZE_LOAD: "exact size checked, then loaded strictly as the promised architecture",
    VERIFIED_LOAD: (
        "no published hash (official RITM release): checked by loading it strictly (every key "
        "and shape) as the promised architecture, after download and on every load"
    ),
    "no record": "imported without a hash record: refused until imported again",
}


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``weights list|fetch NAME|import PATH [--name N]`` to the ``napari-ritm`` CLI.

    Each leaf parser sets ``func`` (via ``set_defaults``) to a handler ``func(args) -> int``
    returning the exit code; handlers raise RitmError for user errors (the CLI prints those).

    Args:
        subparsers: the object returned by ``parser.add_subparsers()`` of the main parser.

    Returns:
        The ``weights`` parser.
    """
    parser = subparsers.add_parser(
        "weights",
        help="list, download or import model weights",
        description=(
            "Manage model weights. Downloads and imported files live in the cache folder "
            f"(${CACHE_ENV}, else the user cache folder)."
        ),
    )

    def _usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_usage)
    actions = parser.add_subparsers(dest="weights_command", metavar="{list,fetch,import}")

    p_list = actions.add_parser(
        "list", help="show known weights, whether they are here and how they are verified"
    )
    p_list.add_argument(
        "--details", action="store_true", help="also show description, training data and path"
    )
    p_list.set_defaults(func=_cmd_list)

    p_fetch = actions.add_parser("fetch", help="download official weights into the cache")
    p_fetch.add_argument("name", help="registry name or alias, e.g. hrnet18s")
    p_fetch.add_argument(
        "--base-url",
        default=None,
        help=f"download from this folder URL (default: ${URL_ENV} or the release)",
    )
    p_fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    p_fetch.set_defaults(func=_cmd_fetch)

    p_import = actions.add_parser("import", help="validate a checkpoint and copy it into the cache")
    p_import.add_argument("path", help="checkpoint file (.pth)")
    p_import.add_argument("--name", default=None, help="name to load it by (default: file stem)")
    p_import.add_argument("--force", action="store_true", help="replace weights of the same name")
    p_import.set_defaults(func=_cmd_import)
    return parser


def _cmd_list(args: argparse.Namespace) -> int:
    infos = list_weights()
    print(f"cache folder: {get_cache_dir()}  (set {CACHE_ENV} to change)")
    rows = [("NAME", "VARIANT", "STATUS", "VERIFIED", "ALIASES")]
    rows += [(i.name, i.variant, i.status, i.verified_by, ", ".join(i.aliases)) for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(4)] + [0]
    for row, info in zip(rows, [None, *infos], strict=True):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if info is not None and args.details:
            print(f"    {info.description}")
            if info.use_for:
                print(f"    for: {info.use_for}")
            if info.extra.get("train_data"):
                print(f"    trained on: {info.extra['train_data']}")
            print(f"    file: {info.path}")
    print(f"default model: {DEFAULT_MODEL}")
    print("verified:")
    for method in dict.fromkeys(i.verified_by for i in infos):
        print(f"  {method}: {_VERIFICATION_NOTES.get(method, method)}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    path = fetch_weights(args.name, progress=not args.quiet, base_url=args.base_url)
    print(path)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    path = import_weights(args.path, args.name, overwrite=args.force)
    print(f"imported as '{path.stem}': {path} (sha256 recorded in {path.with_suffix('.json')})")
    return 0
