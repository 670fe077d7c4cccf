"""The `vinbig` subcommands of the classifier stage (registered by vinbig.cli)."""

from __future__ import annotations


def register(add) -> None:
    """Add this stage's subcommands with ``add(name, func, help, description)``."""
