"""The method plugin contract: one class, a few hooks, its state declared.

The base class *is* FedAvg's behaviour (uniform selection, local SGD on the
global model, averaging, evaluate the global model); a method overrides only
what makes it different. Hooks, called by the engine in this order each round:

``assign(round_idx)``            which client trains what this round
``local_update(client)``         one client's local work (a :class:`ClientContext`) -> :class:`Update`
``loss(model, x, y, client)``    the local objective the shared SGD loop minimises
``aggregate(round_idx, ups)``    fold the updates into the server state
``ends_cycle(round_idx)``        whether the round completes the model (evaluation rounds)
``evaluate(batch_size)``         the metrics of an evaluation round (default: ``eval_model()``)
``round_metrics(...)``           extra per-round metrics to log (e.g. PR)

plus two class-level declarations: ``server_state``/``client_state`` (what is
checkpointed and sent to workers) and ``workloads`` (the sub-models, for the
memory model). "Client" is a simulated participant; the hardware it runs on
is its *device* (the fleet's memory, speed and bandwidth); a *torch device*
(``config.device``) is where tensors compute.

Third-party methods are the same: a subclass in another distribution, registered
under the ``fedbench.methods`` entry point and checked by :func:`validate_method`
at load. They import from :mod:`fedbench.api` (the stable names); the guide is
``docs/plugins.md``, the worked example ``examples/fedprox-plugin`` and the
conformance kit :func:`fedbench.testing.check_method`.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from fedbench.config import TrainConfig, build_dataclass
from fedbench.core.context import RunContext
from fedbench.core.evaluation import evaluate
from fedbench.errors import ConfigError, PluginError
from fedbench.kits.hsic import SIGMA, balanced_probe, block_information_plane
from fedbench.models import BlockModel
from fedbench.simulation.clock import DeviceCost, DeviceTime, device_time
from fedbench.training.aggregate import normalized_weights, weighted_average
from fedbench.training.graphs import StepGraphCache, graph_safe, is_graph_safe, step_graphs
from fedbench.training.loop import LossFn, cross_entropy_loss, local_sgd, model_device, placed_on


@dataclass(frozen=True, kw_only=True)
class NoOptions:
    """A method without options of its own."""


@dataclass(frozen=True)
class Assignment:
    """One device's job this round. ``work`` is the method's own description
    (a width, a stage, ...); the engine never looks inside it."""

    client_id: int
    work: Any = None


@dataclass
class Update:
    """What a device sends back: its new weights and how it got them."""

    client_id: int
    num_samples: int
    state: dict[str, torch.Tensor]
    loss: float
    num_steps: int
    work: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Workload:
    """One (sub-)model a method trains, as the memory model sees it: the module (with
    every parameter its loss uses), the names of its trainable parameters (``None``:
    all) and its loss (``None``: cross-entropy)."""

    name: str
    model: nn.Module
    trainable: frozenset[str] | None = None
    loss_fn: LossFn | None = None


@dataclass(eq=False)
class ClientContext:
    """One client's local update: who, when, where it computes, its randomness, where it started.

    ``local_update`` and ``loss`` receive it, so a method needs no attribute on ``self`` for a
    per-client value. ``start_weights`` is filled by :meth:`Method.train_client` just before local
    SGD: the trainable parameters the client started from, detached, on ``device`` (FedProx's
    anchor works on CUDA as written).
    """

    client_id: int
    round_idx: int
    work: Any
    device: torch.device
    generator: torch.Generator
    start_weights: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def of(cls, ctx: RunContext, assignment: Assignment, round_idx: int) -> ClientContext:
        """The context of ``assignment``'s local update, its generator seeded by (seed, round, client)."""
        return cls(assignment.client_id, round_idx, assignment.work, torch.device(ctx.config.device),
                   ctx.client_generator(round_idx, assignment.client_id))

    @property
    def assignment(self) -> Assignment:
        return Assignment(self.client_id, self.work)


class Method:
    """Base class of every method; its default hooks implement FedAvg.

    **State is declared.** :attr:`server_state` names the attributes that change as the run goes
    on (the global model, a method's own modules, counters, a bandit's arms): they are what a
    checkpoint stores and what worker processes receive every round. :attr:`client_state` names
    dicts keyed by client id that ``local_update`` reads and writes (DepthFL's FedDyn vectors):
    each entry travels to the worker that trains the client and back. A subclass lists only the
    names it adds; the lists of its base classes count too. Every other public attribute is a
    constant that ``__init__`` derives from the config (rebuilt identically on resume and in every
    worker); attributes starting with ``_`` are scratch caches that may be rebuilt at any time.
    Changing an undeclared public attribute after ``__init__`` is a contract violation: under
    ``--executor process`` it is an error, and :func:`fedbench.testing.check_method` finds it.
    """

    options_type: ClassVar[type] = NoOptions
    server_state: ClassVar[tuple[str, ...]] = ("global_model",)
    client_state: ClassVar[tuple[str, ...]] = ()
    # True for a reference that trains devices whatever their memory budget (vanilla FedAvg): its
    # PR of 100 % says nothing about inclusiveness, so report tables mark it "n/a", never bold.
    ignores_memory: ClassVar[bool] = False
    # The local training of the method's own published code where it differs from the paper's
    # common setting (TrainConfig fields: lr, lr_schedule, momentum, batch_size, ...): what the
    # `official` preset runs (docs/protocol.md, spec decisions Q7). Empty: the common setting.
    official_train: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, ctx: RunContext, options: Any | None = None) -> None:
        self.ctx = ctx
        self.options = options if options is not None else self.options_type()
        self.global_model: BlockModel = ctx.build_model()
        self._worker: nn.Module | None = None
        self._graphs: StepGraphCache | None = None  # CUDA graphs kept across clients (_step_graphs)
        self._probe: tuple[torch.Tensor, torch.Tensor] | None = None  # information-plane probe

    # ------------------------------------------------------------ options
    @classmethod
    def parse_options(cls, values: Mapping[str, Any]) -> Any:
        """The method's options dataclass from a mapping (YAML ``options:`` or ``--opt k=v``)."""
        missing = [f.name for f in dataclasses.fields(cls.options_type)
                   if f.name not in values and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and f.init]
        if missing:
            given = " ".join(f"--opt {name}=VALUE" for name in missing)
            raise ConfigError(f"method {cls.__name__} needs option{'s' if len(missing) > 1 else ''} "
                              f"{', '.join(missing)}, which {'have' if len(missing) > 1 else 'has'} no default: "
                              f"pass {given} (options: in YAML), or give {cls.options_type.__name__} a default")
        try:
            return build_dataclass(cls.options_type, dict(values), path=f"options of {cls.__name__}")
        except TypeError as exc:  # a required option without a default is missing
            raise ConfigError(f"options for method {cls.__name__}: {exc}") from exc

    @classmethod
    def workloads(cls, model: BlockModel, options: Any) -> list[Workload]:
        """The (sub-)models this method trains, for ``fedbench memory`` and the fleet fit.
        Methods without sub-models train the full model."""
        return [Workload("full", model)]

    # -------------------------------------------------------------- hooks
    def assign(self, round_idx: int) -> list[Assignment]:
        return [Assignment(c) for c in self.ctx.sample_clients(round_idx)]

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, client: ClientContext) -> torch.Tensor:
        """The local objective the shared SGD loop minimises (default: cross-entropy)."""
        return cross_entropy_loss(model, images, labels)

    def local_update(self, client: ClientContext) -> Update:
        """Train a copy of the global model on the client's shard with the shared SGD loop."""
        model = self.worker_model()
        model.load_state_dict(self.global_model.state_dict())
        return self.train_client(model, client)

    def aggregate(self, round_idx: int, updates: Sequence[Update]) -> None:
        if not updates:
            return
        self.global_model.load_state_dict(self.average(updates))

    def ends_cycle(self, round_idx: int) -> bool:
        """Whether round ``round_idx`` (0-based) ends one of the method's cycles: the rounds after
        which the whole model has been trained (NeuLite: a stage-S round). The engine evaluates at
        cycle ends only: every ``eval_every`` rounds, moved on to the next cycle end where needed.
        Default: every round ends a cycle."""
        return True

    def eval_model(self) -> nn.Module:
        return self.global_model

    def evaluate(self, batch_size: int) -> dict[str, float]:
        """Metrics of an evaluation round: ``eval/accuracy`` and ``eval/loss`` of
        :meth:`eval_model` on the test set. A method with several outputs to score (DepthFL's
        exits and their ensemble) overrides this so the test set is read once."""
        scores = evaluate(self.eval_model(), self.ctx.data.dataset, batch_size, self.ctx.config.device)
        return {"eval/accuracy": scores["accuracy"], "eval/loss": scores["loss"]}

    def information_plane(self, per_class: int, sigma: float = SIGMA) -> dict[str, float]:
        """``nhsic/xz/block<b>`` and ``nhsic/yz/block<b>``: nHSIC(X; Z_b) and nHSIC(Y; Z_b) of every
        block output Z_b of the global model, on a fixed class-balanced probe of ``per_class`` test
        images per class (spec neulite §2.11, the paper's Fig. 2), with Gaussian kernel width
        ``sigma``. Shared by every method, so the end-to-end (FedAvg) and progressive (NeuLite)
        paths are measured the same way; the engine calls it on evaluation rounds when
        ``config.info_plane`` > 0."""
        model = self.global_model
        if not isinstance(model, BlockModel):
            return {}
        dataset = self.ctx.data.dataset
        if self._probe is None:
            self._probe = balanced_probe(dataset, per_class)
        images, labels = self._probe
        device = self.ctx.config.device
        with placed_on(model, device):
            return block_information_plane(model, images.to(device), labels.to(device), dataset.num_classes, sigma)

    def round_metrics(self, round_idx: int, updates: Sequence[Update]) -> dict[str, float]:
        return {}

    def device_cost(self, assignment: Assignment, update: Update | None = None) -> DeviceCost:
        """What the assignment costs the client's device, for the virtual clock. Default: the full
        global model, all trainable, cross-entropy, full state down and up. ``update`` is
        ``None`` for an estimate before training (TiFL's profiling, Oort's over-commitment);
        then the whole shard counts. Methods with sub-models override this."""
        samples = update.num_samples if update is not None else int(self.ctx.data.shards[assignment.client_id].numel())
        return self.ctx.clock.cost(self.global_model, samples)

    def device_time(self, assignment: Assignment, update: Update | None = None) -> DeviceTime:
        """Simulated seconds of the assignment on the client's device (the fleet's speed and bandwidth)."""
        if self.ctx.fleet is None:
            raise ConfigError("the virtual clock needs a device fleet; build the run with engine.prepare")
        device = self.ctx.fleet.devices[assignment.client_id]
        return device_time(assignment.client_id, self.device_cost(assignment, update), device)

    # ------------------------------------------------------ shared pieces
    def train_client(
        self,
        model: nn.Module,
        client: ClientContext,
        *,
        loss_fn: LossFn | None = None,
        max_grad_norm: float | None = None,
        sent: nn.Module | None = None,
        parameters_only: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> Update:
        """The shared local SGD loop on the client's shard with its (seed, round, client)
        generator, packed as the :class:`Update` the client sends: a copy of the state of
        ``sent`` (default ``model``), or of its parameters only. ``loss_fn`` defaults to the
        method's :meth:`loss` with this client's context."""
        if loss_fn is None and type(self).loss is Method.loss:
            loss_fn = cross_entropy_loss  # the same function for every client: one CUDA graph serves them all
        elif loss_fn is None:
            def loss_fn(m: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
                return self.loss(m, images, labels, client)

            if is_graph_safe(type(self).loss):  # a @graph_safe loss hook
                graph_safe(loss_fn)
        config = self.ctx.config
        with placed_on(model, client.device):  # --device cuda: computes there, comes back
            client.start_weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            result = local_sgd(
                model,
                self.ctx.data.dataset,
                self.ctx.data.shards[client.client_id],
                config.train.at_round(client.round_idx, config.rounds),  # the round's lr
                client.generator,
                loss_fn=loss_fn,
                max_grad_norm=max_grad_norm,
                graphs=self._step_graphs(model),
            )
        client.start_weights = {}
        source = sent if sent is not None else model
        tensors = source.named_parameters() if parameters_only else source.state_dict().items()
        return Update(
            client_id=client.client_id,
            num_samples=result.num_samples,
            state={k: v.detach().clone() for k, v in tensors},
            loss=result.mean_loss,
            num_steps=result.num_steps,
            work=client.work,
            extra=dict(extra or {}),
        )

    def average(self, updates: Sequence[Update]) -> dict[str, torch.Tensor]:
        """The run's weighting (``uniform`` or ``samples``) applied to the updates' states."""
        weights = normalized_weights([u.num_samples for u in updates], self.ctx.config.weighting)
        return weighted_average([u.state for u in updates], weights)

    def _step_graphs(self, model: nn.Module) -> StepGraphCache | None:
        """The run's CUDA-graph maker and the step graph it keeps across clients, or None (no
        ``cuda_graphs``, or not on a GPU)."""
        make_graph = step_graphs(model_device(model), self.ctx.config.uses_cuda_graphs)
        if make_graph is None:
            return None
        if self._graphs is None or self._graphs.make_graph is not make_graph:
            self._graphs = StepGraphCache(make_graph, check_host_reads=self.ctx.config.executor != "streams")
        return self._graphs

    def worker_model(self) -> nn.Module:
        """A reusable model instance for local training, so no model is built per client."""
        if self._worker is None:
            self._worker = copy.deepcopy(self.global_model)
        return self._worker

    # --------------------------------------------------------- declared state
    @classmethod
    def state_names(cls) -> tuple[str, ...]:
        """Every declared attribute, server state first: this class's and its bases' lists."""
        names: list[str] = []
        for kind in ("server_state", "client_state"):
            for klass in reversed(cls.__mro__):
                for name in vars(klass).get(kind, ()):
                    if name not in names:
                        names.append(name)
        return tuple(names)

    @classmethod
    def client_state_names(cls) -> tuple[str, ...]:
        return tuple(n for klass in reversed(cls.__mro__) for n in vars(klass).get("client_state", ()))

    def state_values(self) -> dict[str, Any]:
        """The declared attributes' current values (live objects, not copies)."""
        missing = [name for name in self.state_names() if not hasattr(self, name)]
        if missing:
            raise PluginError(f"method {type(self).__name__} declares state {', '.join(missing)} "
                              "but has no such attribute after __init__; set it in __init__")
        return {name: getattr(self, name) for name in self.state_names()}

    def load_state_values(self, values: Mapping[str, Any]) -> None:
        """Set declared attributes from :meth:`state_values` of an identical method."""
        for name, value in values.items():
            setattr(self, name, value)


def validate_method(name: str, obj: object) -> None:
    """Registry check, so a broken plugin fails at load rather than mid-run: a method plugin
    is a :class:`Method` subclass with a dataclass options type, and every hook it overrides
    is a method that takes the arguments the engine passes (those of the base hook)."""
    if isinstance(obj, type) and not issubclass(obj, Method):
        missing = [hook for hook in _hook_names() if not callable(getattr(obj, hook, None))]
        lacks = f"; it lacks the hook{'s' if len(missing) > 1 else ''} {', '.join(missing)}" if missing else ""
        raise PluginError(
            f"method '{name}' ({obj.__module__}.{obj.__qualname__}) must be a subclass of "
            f"fedbench.api.Method{lacks}; subclass Method and override only what differs from FedAvg"
        )
    if not (isinstance(obj, type) and issubclass(obj, Method)):
        raise PluginError(f"method '{name}' must be a subclass of fedbench.api.Method, got {obj!r}")
    if not dataclasses.is_dataclass(obj.options_type):
        raise PluginError(f"method '{name}': options_type must be a dataclass")
    for kind in ("server_state", "client_state"):
        declared = vars(obj).get(kind, ())
        if not (isinstance(declared, tuple) and all(isinstance(n, str) and n.isidentifier() for n in declared)):
            raise PluginError(f"method '{name}': {kind} must be a tuple of attribute names, "
                              f"e.g. {kind} = (\"heads\",), got {declared!r}")
    official = vars(obj).get("official_train", {})
    try:
        build_dataclass(TrainConfig, official, path="official_train")
    except ConfigError as exc:
        raise PluginError(f"method '{name}': {exc}") from exc
    for hook in _hook_names():
        problem = _override_problem(obj, hook)
        if problem:
            raise PluginError(f"method '{name}' ({obj.__module__}.{obj.__qualname__}): {problem}")


def _hook_names() -> list[str]:
    """``__init__`` (the engine calls ``cls(ctx, options)``) and the public methods of
    :class:`Method` (hooks and shared pieces) a subclass may override."""
    return ["__init__"] + [
        attr for attr, raw in vars(Method).items()
        if not attr.startswith("_") and (inspect.isfunction(raw) or isinstance(raw, (staticmethod, classmethod)))
    ]


def _positional_arity(cls: type, attr: str) -> tuple[inspect.Signature, int] | None:
    """``attr``'s signature as seen through the class, and how many leading placeholders stand
    for ``self`` (1 for a plain method; 0 for a class or static method). None: not inspectable."""
    raw = inspect.getattr_static(cls, attr)
    try:
        signature = inspect.signature(getattr(cls, attr))
    except (TypeError, ValueError):
        return None
    return signature, 0 if isinstance(raw, (staticmethod, classmethod)) else 1


def _override_problem(cls: type, hook: str) -> str | None:
    """Why ``cls``'s override of ``hook`` cannot be called the way the engine calls the base one."""
    own = inspect.getattr_static(cls, hook)
    if own is inspect.getattr_static(Method, hook):
        return None
    if not callable(getattr(cls, hook)):
        return f"hook '{hook}' is {own!r}, not a method; define it with def or delete it to keep FedAvg's"
    base, mine = _positional_arity(Method, hook), _positional_arity(cls, hook)
    if base is None or mine is None:
        return None
    base_signature, base_self = base
    passed = [
        p for p in base_signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ][base_self:]
    signature, own_self = mine
    try:
        signature.bind(*([None] * (own_self + len(passed))))
    except TypeError:
        expected = ", ".join(["self"] * base_self + [p.name for p in passed])
        return (
            f"hook '{hook}{signature}' cannot take the engine's arguments; "
            f"define it as {hook}({expected}) like fedbench.api.Method.{hook}"
        )
    return None
