"""The method contract: every built-in method and the FedProx example pass the conformance kit,
and a plugin that breaks the contract fails it with one line that names the culprit."""

from __future__ import annotations

import pytest

from fedbench import registry
from fedbench.core.method import ClientContext, Method, Update
from fedbench.errors import PluginError
from fedbench.testing import check_method

BUILTIN_METHODS = sorted(info.name for info in registry.available("methods") if info.builtin)


@pytest.mark.parametrize("name", BUILTIN_METHODS)
def test_every_builtin_method_passes_the_conformance_kit(name):
    report = check_method(registry.load("methods", name))
    assert "serial = process executor" in report.passed, report.skipped


def test_the_fedprox_example_passes_the_conformance_kit():
    fedprox = pytest.importorskip("fedbench_fedprox")
    report = check_method(fedprox.FedProx, {"mu": 0.1})
    assert len(report.passed) == 5, report


class CountsClients(Method):
    """Keeps a per-client count on ``self`` without declaring it: lost under worker processes."""

    def __init__(self, ctx, options=None):
        super().__init__(ctx, options)
        self.seen: dict[int, int] = {}

    def local_update(self, client: ClientContext) -> Update:
        self.seen[client.client_id] = self.seen.get(client.client_id, 0) + 1
        return super().local_update(client)


class DeclaresWhatItKeeps(CountsClients):
    server_state = ("seen",)


def test_undeclared_state_written_in_local_update_fails_the_kit_in_one_line():
    with pytest.raises(PluginError) as failure:
        check_method(CountsClients, processes=False)
    message = str(failure.value)
    assert "\n" not in message
    assert "round 1 changed seen, which is not declared state" in message


def test_the_same_method_with_its_state_declared_passes():
    report = check_method(DeclaresWhatItKeeps, processes=False)
    assert "declared state" in report.passed and "resumed = uninterrupted" in report.passed


def test_declared_state_must_be_a_tuple_of_names():
    from fedbench.core.method import validate_method

    class Misdeclared(Method):
        server_state = "global_model"

    with pytest.raises(PluginError, match="server_state must be a tuple of attribute names"):
        validate_method("misdeclared", Misdeclared)


def test_an_option_without_a_default_that_is_not_given_says_how_to_give_it():
    from dataclasses import dataclass

    from fedbench.errors import ConfigError

    @dataclass(frozen=True, kw_only=True)
    class NeedsRate:
        global_lr: float
        beta: float = 0.9

    class ServerRate(Method):
        options_type = NeedsRate

    with pytest.raises(ConfigError) as failure:
        ServerRate.parse_options({"beta": 0.5})
    assert str(failure.value) == ("method ServerRate needs option global_lr, which has no default: pass "
                                  "--opt global_lr=VALUE (options: in YAML), or give NeedsRate a default")
    assert ServerRate.parse_options({"global_lr": 1}).global_lr == 1.0
