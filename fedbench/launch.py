"""The ``fedbench`` command's entry point: the MLflow helper first, then the command line.

A tracked ``fedbench run`` logs through a helper process (fedbench/tracking_process.py) that
imports MLflow and opens its store — 2–3 s of single-threaded Python that, on a small machine,
decides when round 1 can be logged. Importing the command line (typer, rich, numpy) and parsing
the options and the config take 0.2–0.4 s before the run would start it. So this module reads
the raw arguments first and, when they ask for a tracked run, starts the helper at once; the
run's :class:`~fedbench.tracking_process.ProcessTracker` adopts it with the store it parsed. A
run that turns out untracked (tracking off in its config file) or fails before it starts leaves
the helper unadopted, and it is stopped on the way out. Imports nothing heavy itself.
"""

from __future__ import annotations

import sys

# Options after which `fedbench run` starts no helper of its own (or none at all).
_NO_HELPER = frozenset({"--no-tracking", "--help", "-h", "--resume"})


def wants_helper(args: list[str]) -> bool:
    """Whether these arguments ask for a tracked ``fedbench run``."""
    return bool(args) and args[0] == "run" and not any(a.split("=", 1)[0] in _NO_HELPER for a in args[1:])


def main() -> None:
    """Console-script entry point (``fedbench``)."""
    early = wants_helper(sys.argv[1:])
    if early:
        from fedbench.tracking_process import start_helper_early

        start_helper_early()
    try:
        from fedbench.cli import main as cli_main

        cli_main()
    finally:
        if early:
            from fedbench.tracking_process import stop_early_helper

            stop_early_helper()
