"""argparse types of `--refresh`, `--digest` and `--verify` (bad values exit 2 before anything
touches the volume)."""

from __future__ import annotations

import argparse

from webhook.cache.integrity import IntegrityError, parse_digest
from webhook.cache.versions import PolicyError, Refresh, parse_refresh


def refresh_arg(text: str) -> Refresh:
    try:
        return parse_refresh(text)
    except PolicyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def digest_arg(text: str) -> str:
    """`sha256:<hex>`, or "" for no pin."""
    if not text.strip():
        return ""
    try:
        return parse_digest(text)
    except IntegrityError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
