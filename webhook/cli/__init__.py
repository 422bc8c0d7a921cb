"""`kserve-cache` command line: one module per command, imported only to build its parser.

Command modules import their heavy dependencies (KServe's downloader, the Kubernetes client)
inside their `run` function, so `serve` never loads `kserve-storage`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

COMMANDS: dict[str, str] = {
    "fetch": "webhook.cli.fetch",
    "serve": "webhook.cli.serve",
    "certs": "webhook.cli.certs",
    "gc": "webhook.cli.gc",
    "stats": "webhook.cli.stats",
    "warm": "webhook.cli.warm",
    "preview": "webhook.cli.preview",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kserve-cache",
        description="Shared model cache for KServe predictors: webhook, init container, tools.",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    code: int = args.run(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
