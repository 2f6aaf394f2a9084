"""The plugin manager and the registry of named components built from it.

One function builds the manager (:func:`get_plugin_manager`); :class:`Registry` asks every
plugin to register its components and answers "which factory is called ``topk``?".
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pluggy

from vantage_core import hookspecs
from vantage_core.errors import PluginError

ENTRY_POINT_GROUP = "vantage"
BUILTIN_DISTRIBUTION = "vantage"
DISABLE_AUTOLOAD_ENV = "VANTAGE_DISABLE_PLUGIN_AUTOLOAD"
ENABLE_PLUGINS_ENV = "VANTAGE_PLUGINS"  # comma-separated entry-point names loaded even when autoload is off

# kind -> (hook name, the arguments the core passes before the config's own parameters)
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "router": ("register_routers", ("d_model", "num_experts")),
    "expert": ("register_experts", ("d_model", "hidden", "num_experts")),
    "schema_encoder": ("register_schema_encoders", ("d_model", "tokenizer")),
    "schema_linker": ("register_schema_linkers", ()),
    "database": ("register_databases", ("url",)),
    "dataset": ("register_datasets", ()),
    "metric": ("register_metrics", ()),
    "tokenizer": ("register_tokenizers", ()),
    "constraint": ("register_constraints", ()),
    "logger": ("register_loggers", ("run_dir", "config")),
}


@dataclass(frozen=True)
class PluginEntry:
    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str  # the name the plugin manager knows the plugin module by
    distribution: str
    version: str
    description: str = ""

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The keyword parameters a config may set (the core's own arguments excluded)."""
        return accepted_parameters(self.factory, KINDS[self.kind][1])


def accepted_parameters(factory: Callable[..., Any], core_args: Iterable[str] = ()) -> dict[str, inspect.Parameter]:
    """The parameters ``factory`` takes, those in ``core_args`` left out: its signature's, or,
    for a factory that takes them as ``**params`` and names their dataclass in its
    ``params_type`` attribute, that dataclass's fields."""
    target = getattr(factory, "params_type", None) or (factory.__init__ if inspect.isclass(factory) else factory)
    params = dict(inspect.signature(target).parameters)
    params.pop("self", None)
    for name in core_args:
        params.pop(name, None)
    return {k: p for k, p in params.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.VAR_KEYWORD)}


def _autoload_disabled() -> bool:
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, remembering the distribution and version each plugin came from."""

    def __init__(self) -> None:
        super().__init__("vantage")
        self.add_hookspecs(hookspecs)
        self.distributions: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)


def get_plugin_manager(autoload: bool | None = None) -> PluginManager:
    """A plugin manager with Vantage's hook specs and the plugins declared under the
    ``vantage`` entry-point group.

    Third-party plugins load unless ``VANTAGE_DISABLE_PLUGIN_AUTOLOAD`` is set (or
    ``autoload=False``); the built-in plugins, declared by the ``vantage`` distribution itself,
    always load, and ``VANTAGE_PLUGINS=a,b`` loads the named entry points in either case.
    """
    from importlib.metadata import entry_points

    if autoload is None:
        autoload = not _autoload_disabled()
    wanted = {n.strip() for n in os.environ.get(ENABLE_PLUGINS_ENV, "").split(",") if n.strip()}
    pm = PluginManager()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "unknown"
        if not (autoload or dist == BUILTIN_DISTRIBUTION or ep.name in wanted):
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin must say which one it is
            raise PluginError(
                f"plugin {ep.name!r} (entry point {ep.value!r} of distribution {dist!r}) "
                f"failed to import: {type(exc).__name__}: {exc}") from exc
        pm.register(module, name=ep.name)
        pm.distributions[ep.name] = (dist, ep.dist.version if ep.dist is not None else "")
    pm.check_pending()
    return pm


def _distribution_of(pm: pluggy.PluginManager, plugin_name: str, plugin: object) -> tuple[str, str]:
    known = getattr(pm, "distributions", {}).get(plugin_name)
    if known:
        return known
    module = getattr(plugin, "__name__", None) or type(plugin).__module__
    return (f"(registered directly: {module})", "")


class Registry:
    """Every component each plugin registered, by kind and name."""

    def __init__(self, pm: pluggy.PluginManager | None = None):
        self.pm = pm if pm is not None else get_plugin_manager()
        self._entries: dict[str, dict[str, PluginEntry]] = {kind: {} for kind in KINDS}
        for kind, (hook_name, _) in KINDS.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                impl.function(register=self._register_callback(kind, impl.plugin_name, impl.plugin))

    def _register_callback(self, kind: str, plugin_name: str, plugin: object):
        dist, version = _distribution_of(self.pm, plugin_name, plugin)

        def register(name: str, factory: Callable[..., Any], *, description: str = "") -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {plugin_name!r} registered a {kind} with an invalid name {name!r}")
            if not callable(factory):
                raise PluginError(f"plugin {plugin_name!r} registered {kind} {name!r} with a non-callable {factory!r}")
            existing = self._entries[kind].get(name)
            if existing is not None:
                raise PluginError(
                    f"two plugins register the {kind} {name!r}: {existing.plugin!r} "
                    f"({existing.distribution} {existing.version}, {_qualname(existing.factory)}) and "
                    f"{plugin_name!r} ({dist} {version}, {_qualname(factory)}); uninstall or "
                    f"block one of them (VANTAGE_DISABLE_PLUGIN_AUTOLOAD=1 keeps only the built-ins)")
            doc = description or (inspect.getdoc(factory) or "").split("\n")[0]
            self._entries[kind][name] = PluginEntry(kind, name, factory, plugin_name, dist, version, doc)

        return register

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[self._kind(kind)])

    def entries(self, kind: str | None = None) -> list[PluginEntry]:
        kinds = [self._kind(kind)] if kind else list(KINDS)
        return [self._entries[k][n] for k in kinds for n in sorted(self._entries[k])]

    def get(self, kind: str, name: str) -> PluginEntry:
        kind = self._kind(kind)
        try:
            return self._entries[kind][name]
        except KeyError:
            valid = ", ".join(self.names(kind)) or "(none)"
            raise PluginError(f"unknown {kind} {name!r}; registered: {valid}") from None

    def check_params(self, kind: str, name: str, params: dict[str, Any]) -> list[str]:
        """The problems with ``params`` for this plugin (empty when they fit its signature)."""
        accepted = self.get(kind, name).parameters()
        if any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
            return []
        named = sorted(k for k in accepted)
        return [f"{kind} {name!r} takes no parameter {key!r}; it accepts: {', '.join(named) or '(none)'}"
                for key in params if key not in accepted]

    def build(self, kind: str, name: str, *args: Any, **params: Any) -> Any:
        """Call the factory registered as ``name`` with the core's ``args`` and the config's ``params``."""
        problems = self.check_params(kind, name, params)
        if problems:
            raise PluginError("; ".join(problems))
        return self.get(kind, name).factory(*args, **params)

    def _kind(self, kind: str) -> str:
        if kind not in KINDS:
            raise PluginError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")
        return kind


def _qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


_default: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _default
    if _default is None:
        _default = Registry()
    return _default
