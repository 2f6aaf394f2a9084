"""Every hook a Vantage plugin can implement, in one place.

Each hook is a *registration* hook: Vantage calls it once per plugin with a ``register``
callback, and the plugin calls ``register(name, factory)`` for each component it offers. The
``name`` is exactly the name a YAML config uses (``router: {name: topk, k: 2}``); the other keys
of that mapping are passed to ``factory`` as keyword arguments, checked against its signature
before any work starts. Passing a callback (rather than returning a list) lets the core add
keyword arguments to ``register`` later without breaking a plugin.

A minimal plugin module::

    from vantage_core import hookimpl

    @hookimpl
    def register_routers(register):
        register("my_router", MyRouter)

declared in its ``pyproject.toml`` under the ``vantage`` entry-point group::

    [project.entry-points.vantage]
    my_plugin = "my_package.my_module"
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import pluggy

hookspec = pluggy.HookspecMarker("vantage")


class Register(Protocol):
    """The callback handed to every ``register_*`` hook."""

    def __call__(self, name: str, factory: Callable[..., Any], *, description: str = "") -> None:
        """Offer ``factory`` under ``name``; ``description`` defaults to its docstring's first line."""


@hookspec
def register_routers(register: Register) -> None:
    """Register token-to-expert routers.

    ``factory(d_model: int, num_experts: int, **params)`` returns an ``mlx.nn.Module`` whose
    ``__call__(x)`` takes ``x`` of shape ``(N, d_model)`` and returns a
    :class:`vantage_core.model.moe.Routing` (expert indices ``(N, k)``, combine weights
    ``(N, k)``, router probabilities and the auxiliary losses it adds to the training loss).
    """


@hookspec
def register_experts(register: Register) -> None:
    """Register expert feed-forward banks.

    ``factory(d_model: int, hidden: int, num_experts: int, **params)`` returns an
    ``mlx.nn.Module`` implementing :class:`vantage_core.model.moe.ExpertBank`: the weights of
    all experts, applied to token blocks already grouped by expert.
    """


@hookspec
def register_schema_encoders(register: Register) -> None:
    """Register schema encoders: the states the decoder cross-attends to.

    ``factory(d_model: int, tokenizer, **params)`` (``tokenizer``: the decoder's
    :class:`vantage_core.data.tokenizer.Tokenizer`, for encoders that share it) returns an ``mlx.nn.Module``
    implementing :class:`vantage_core.model.schema.SchemaEncoder`.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register dataset adapters.

    ``factory(**params)`` returns an object implementing
    :class:`vantage_core.data.example.DatasetAdapter`: ``load(split)`` gives the split's
    :class:`~vantage_core.data.example.Example` rows with a count of what was skipped and why.
    """


@hookspec
def register_metrics(register: Register) -> None:
    """Register evaluation metrics.

    ``factory(**params)`` returns an object implementing
    :class:`vantage_core.evaluate.metric.Metric`: it scores one prediction against one example
    and summarizes many scores.
    """


@hookspec
def register_tokenizers(register: Register) -> None:
    """Register tokenizers for the decoder's text.

    ``factory(**params)`` returns an object implementing
    :class:`vantage_core.data.tokenizer.Tokenizer` (train, encode, decode, save, load).
    """


@hookspec
def register_constraints(register: Register) -> None:
    """Register decoding constraints (logits processors).

    ``factory(**params)`` returns an object implementing
    :class:`vantage_core.inference.constraints.Constraint`: given the schema and the tokens
    decoded so far, it masks the tokens that cannot continue a valid query.
    """


@hookspec
def register_loggers(register: Register) -> None:
    """Register telemetry sinks for training runs.

    ``factory(run_dir: str, config: dict, **params)`` returns an object with ``log(step: int,
    metrics: dict)`` and ``close()``.
    """
