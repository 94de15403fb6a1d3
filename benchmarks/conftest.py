"""pytest-benchmark suite settings (``nox -s bench``; never part of the CI test run).

The benchmark modules import their shared pieces from ``benchmarks/harness.py`` the way the
scripts do when run directly, so this folder goes on ``sys.path``. Sizes are options so that a
busy machine can run a shortened pass; the defaults are the issue's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fedbench benchmarks")
    group.addoption("--bench-rounds", type=int, default=10,
                    help="rounds of W for the end-to-end and overhead figures (default 10)")
    group.addoption("--bench-scale-rounds", type=int, default=4,
                    help="rounds per client count in the per-client overhead figure (default 4)")
    group.addoption("--bench-clients", default="100,1000,10000",
                    help="client counts of the per-client overhead figure (default 100,1000,10000)")


@pytest.fixture
def bench_rounds(request: pytest.FixtureRequest) -> int:
    return request.config.getoption("--bench-rounds")


@pytest.fixture
def bench_scale_rounds(request: pytest.FixtureRequest) -> int:
    return request.config.getoption("--bench-scale-rounds")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "num_clients" in metafunc.fixturenames:
        counts = [int(c) for c in metafunc.config.getoption("--bench-clients").split(",") if c.strip()]
        metafunc.parametrize("num_clients", counts, ids=[f"{c}clients" for c in counts])
