"""`kserve-cache` command line: one module per command, imported only when it is asked for.

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
    "verify": "webhook.cli.verify",
    "share": "webhook.cli.share",
    "doctor": "webhook.cli.doctor",
    "prepare-volume": "webhook.cli.prepare_volume",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that command's (the init container starts faster)."""
    parser = argparse.ArgumentParser(
        prog="kserve-cache",
        description="Shared model cache for KServe predictors: webhook, init container, tools.",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module_name).add_parser(sub)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command named in argv, skipping the global `--log-level X`."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--log-level":
            skip = True
        elif not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv))
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
