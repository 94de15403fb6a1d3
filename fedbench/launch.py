"""The ``fedbench`` console script's target (``[project.scripts]`` in pyproject.toml).

It only names the command line's entry point, :func:`fedbench.cli.main`; it is its own module
so that an installed script keeps working wherever the command line's module moves.
"""

from __future__ import annotations

from fedbench.cli import main

__all__ = ["main"]
