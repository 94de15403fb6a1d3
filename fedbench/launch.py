"""The ``fedbench`` command's entry point: the MLflow helper first, then the command line.

A tracked ``fedbench run`` logs through a helper process (fedbench/tracking_process.py) that
imports MLflow and opens its store — 2–3 s of single-threaded Python that, on a small machine,
decides when round 1 can be logged. Importing the command line (typer, rich, numpy) and parsing
the options and the config take 0.2–0.4 s before the run would start it. So this module reads
the raw arguments first and, when they ask for a tracked run, starts the helper at once; the
run's :class:`~fedbench.tracking_process.ProcessTracker` adopts it with the store it parsed. A
run that turns out untracked (tracking off in its config file) or fails before it starts leaves
the helper unadopted, and it is stopped on the way out.

The commands that need torch (``run``, ``memory``) import it first thing, with Python's cyclic
garbage collector held off (fedbench/gc_pause.py), then freeze what the import made
(``gc.freeze``): torch leaves ~185,000 long-lived objects, and every full collection walked them
again — 1.3–1.7 s to import torch with the collector running, 1.1–1.2 s without; importing the
command line and the engine after it 0.34–0.43 s, 0.10 s with torch's objects frozen. Frozen
objects live until the process ends (they are torch's modules and functions); later collections,
and forked workers' copy-on-write pages, no longer touch them. Imports nothing heavy itself
otherwise.
"""

from __future__ import annotations

import sys

# Options after which `fedbench run` starts no helper of its own (or none at all).
_NO_HELPER = frozenset({"--no-tracking", "--help", "-h", "--resume"})


def wants_helper(args: list[str]) -> bool:
    """Whether these arguments ask for a tracked ``fedbench run``."""
    return bool(args) and args[0] == "run" and not any(a.split("=", 1)[0] in _NO_HELPER for a in args[1:])


# Commands that import torch whatever their options (but --help).
_NEED_TORCH = frozenset({"run", "memory"})


def needs_torch(args: list[str]) -> bool:
    """Whether these arguments run a command that imports torch."""
    return bool(args) and args[0] in _NEED_TORCH and not any(a in ("--help", "-h") for a in args[1:])


def import_torch() -> None:
    """``import torch`` without the garbage collector's passes over the objects it makes, now or
    in any later collection of this process."""
    from fedbench.gc_pause import import_frozen

    import_frozen("torch")


def main() -> None:
    """Console-script entry point (``fedbench``)."""
    early = wants_helper(sys.argv[1:])
    if early:
        from fedbench.tracking_process import start_helper_early

        start_helper_early()
    if needs_torch(sys.argv[1:]):
        import_torch()
    try:
        from fedbench.cli import main as cli_main

        cli_main()
    finally:
        if early:
            from fedbench.tracking_process import stop_early_helper

            stop_early_helper()
