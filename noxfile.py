"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s bench``.

Sessions reuse the current environment (``python=False``) because the torch
wheel is several GB; run them from the venv the README sets up.
"""

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
    session.run("python", "-m", "pytest", "benchmarks", "--benchmark-only", *session.posargs)
