"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s bench``.

Sessions reuse the current environment (``python=False``) because the torch
wheel is several GB; run them from the venv the README sets up.
"""

import os

import nox

nox.options.sessions = ["tests", "lint"]


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", "fedbench", "methods", "datasets", "reports", "tests", "benchmarks", "noxfile.py")


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """The issue-13 benchmark suite (benchmarks/bench_*.py, pytest-benchmark), then its summary table.

    Results go to ``.benchmarks/results.json``; ``nox -s bench -- benchmarks/bench_scale.py``
    runs one file, ``nox -s bench -- --bench-rounds 4`` shortens the runs (see benchmarks/conftest.py).
    """
    results = ".benchmarks/results.json"
    os.makedirs(".benchmarks", exist_ok=True)
    targets = [a for a in session.posargs if a.startswith("benchmarks")] or ["benchmarks"]
    options = [a for a in session.posargs if not a.startswith("benchmarks")]
    session.run(
        "python", "-m", "pytest", *targets, "-o", "python_files=bench_*.py", "--benchmark-only",
        f"--benchmark-json={results}", *options,
    )
    session.run("python", "benchmarks/summarize.py", results)
