"""Models registered by name, created with ``ctrlab.models.create(name, feature_map, **hparams)``.

A model's hyperparameters are the keyword parameters of its ``__init__`` after ``feature_map``:
those with a default are optional, those without are required, and a ``**kwargs`` parameter
accepts any name (the model checks them). See docs/adding_a_model.md.

Models come from three places, all registered with :func:`register`:

* ctrlab's own, imported by :mod:`ctrlab.models`;
* installed packages that declare an entry point in the group ``ctrlab.models``
  (``[project.entry-points."ctrlab.models"] my_net = "my_pkg.models"``: a module whose import
  registers its models, or a model class, which is registered under its class name);
* modules or ``.py`` files named in the environment variable ``CTRLAB_PLUGINS`` (comma-separated;
  the CLI's ``ctrlab --import MODULE ...`` adds to it, so worker processes inherit it).

Entry points and ``CTRLAB_PLUGINS`` are loaded at the first registry lookup (and the variable is
read again at every lookup), so every path that builds a model by name (train, evaluate,
export, ``serve --backend torch``, bench) sees the same models. A plugin that fails to import
raises :class:`PluginError` naming it, never a silently missing model.
"""
from __future__ import annotations

import collections.abc
import copy
import functools
import importlib
import importlib.util
import inspect
import os
import sys
import types
import typing
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..config import _convert
from ..data.feature_map import FeatureMap

ENTRY_POINT_GROUP = "ctrlab.models"
PLUGINS_ENV = "CTRLAB_PLUGINS"
_HOW_TO_ADD = (f"a model from outside ctrlab must be imported first: `ctrlab --import MODULE_OR_FILE.py ...`, "
               f"{PLUGINS_ENV}=MODULE_OR_FILE.py, or an entry point in the group {ENTRY_POINT_GROUP!r} "
               f"(docs/adding_a_model.md)")

_REGISTRY: dict[str, type] = {}
_entry_points_state = "to load"        # "to load" -> "loading" -> "loaded"
_imported_specs: dict[str, str] = {}     # plugin spec (module name or resolved file) -> module name
_file_modules: dict[str, str] = {}       # module name -> the file it was loaded from


class PluginError(ValueError):
    """A model plugin (``--import``, ``CTRLAB_PLUGINS`` or an entry point) could not be loaded."""


# ---- registration ------------------------------------------------------------------------------
def register(cls: type | None = None, *, defaults: Mapping[str, Any] | None = None):
    """Class decorator: make a model creatable by its class name (case-insensitive).

    ``@register(defaults={"hidden_units": (400, 400)})`` on a subclass changes the defaults of
    inherited hyperparameters without re-declaring ``__init__`` (the class's signature, and so
    :func:`default_hparams`, ``ctrlab models -v`` and direct construction, use the new ones).
    """
    def deco(cls: type) -> type:
        if defaults:
            _override_defaults(cls, dict(defaults))
        key = cls.__name__.lower()
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            old = _REGISTRY[key]
            raise ValueError(f"model name {cls.__name__!r} is registered twice "
                             f"({old.__module__}.{old.__qualname__} and {cls.__module__}.{cls.__qualname__}); "
                             f"rename one of the classes")
        _REGISTRY[key] = cls
        return cls

    return deco if cls is None else deco(cls)


def _override_defaults(cls: type, defaults: dict[str, Any]) -> None:
    """Give ``cls`` an ``__init__`` that is its parent's with some keyword defaults replaced."""
    parent_init = cls.__init__
    sig = inspect.signature(parent_init)
    unknown = sorted(set(defaults) - set(sig.parameters) - {"self", "feature_map"})
    if unknown:
        raise ValueError(f"{cls.__name__}: cannot override defaults of {unknown}: not parameters of "
                         f"{parent_init.__qualname__}")
    new_sig = sig.replace(parameters=[p.replace(default=defaults[k]) if k in defaults else p
                                      for k, p in sig.parameters.items()])

    @functools.wraps(parent_init)
    def __init__(self, *args, **kwargs):
        bound = new_sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        parent_init(*bound.args, **bound.kwargs)

    __init__.__signature__ = new_sig
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = __init__


# ---- lookup ------------------------------------------------------------------------------------
def list_models() -> list[str]:
    load_plugins()
    return sorted(cls.__name__ for cls in _REGISTRY.values())


def get_model_class(name: str) -> type:
    load_plugins()
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available models: {list_models()}; {_HOW_TO_ADD}") from None


@dataclass(frozen=True)
class Hyperparameters:
    """A model's hyperparameters as its ``__init__`` declares them."""

    defaults: dict[str, Any]
    """Optional ones and their defaults (live objects: copy before handing them out)."""
    required: tuple[str, ...]
    """Ones without a default: :func:`create` needs a value."""
    open: bool
    """``__init__`` takes ``**kwargs``: any other name is passed on (the model checks it)."""

    @property
    def names(self) -> list[str]:
        return sorted([*self.defaults, *self.required])


def hyperparameters(name: str) -> Hyperparameters:
    sig = inspect.signature(get_model_class(name).__init__)
    defaults: dict[str, Any] = {}
    required: list[str] = []
    open_ = False
    for k, p in sig.parameters.items():
        if k in ("self", "feature_map") or p.kind is p.VAR_POSITIONAL:
            continue
        if p.kind is p.VAR_KEYWORD:
            open_ = True
        elif p.default is inspect.Parameter.empty:
            required.append(k)
        else:
            defaults[k] = p.default
    return Hyperparameters(defaults, tuple(required), open_)


def default_hparams(name: str) -> dict:
    """The documented defaults of a model's hyperparameters (its __init__ keyword defaults), as a
    deep copy: changing the returned values changes nothing else. Required hyperparameters
    (no default) are not in it; see :func:`hyperparameters`."""
    return copy.deepcopy(hyperparameters(name).defaults)


def check_hparams(name: str, hparams: Mapping[str, Any], complete: bool = True) -> None:
    """Raise ValueError naming unknown hyperparameters, (``complete``) required ones not given, and
    values that do not match their annotation (a ConfigError, itself a ValueError)."""
    cls = get_model_class(name)
    spec = hyperparameters(name)
    unknown = [] if spec.open else sorted(set(hparams) - set(spec.names))
    if unknown:
        raise ValueError(f"{cls.__name__} has no hyperparameter(s) {unknown}; allowed: {spec.names}")
    missing = [k for k in spec.required if k not in hparams] if complete else []
    if missing:
        raise ValueError(f"{cls.__name__} needs hyperparameter(s) {missing} (no default): give them in "
                         f"model_params (CLI: --set model_params.{missing[0]}=VALUE)")
    _check_types(cls, hparams)


def _checkable(tp: Any) -> bool:
    """Whether :func:`ctrlab.config._convert` understands every part of a type hint (others are not checked)."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return True
    if origin is not None:
        return origin in (typing.Union, types.UnionType, list, tuple, dict, collections.abc.Sequence) and all(
            a is Ellipsis or _checkable(a) for a in typing.get_args(tp))
    return tp in (int, float, str, bool, type(None), Any)


def _check_types(cls: type, hparams: Mapping[str, Any]) -> None:
    """Each hyperparameter against its annotation in the model's ``__init__`` (when it has a plain
    one): a :class:`~ctrlab.config.ConfigError` naming the key (``model_params.hidden_units (DNN):
    expected a list, got 'abc'``) instead of a failure deep in a layer."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation this Python cannot evaluate: leave the check to the model
        return
    for key, value in hparams.items():
        tp = hints.get(key)
        if tp is not None and _checkable(tp):
            _convert(value, tp, f"model_params.{key} ({cls.__name__})")


def create(name: str, feature_map: FeatureMap, **hparams):
    """Instantiate model ``name``; unknown or missing hyperparameters raise a clear error. Every
    default is passed as a fresh copy, so a model that changes one cannot change the next."""
    cls = get_model_class(name)
    check_hparams(name, hparams)
    return cls(feature_map, **{**default_hparams(name), **hparams})


# ---- plugins -----------------------------------------------------------------------------------
def plugin_specs(value: str | None = None) -> list[str]:
    """The plugin modules / files named in ``CTRLAB_PLUGINS`` (or ``value``), in order."""
    value = os.environ.get(PLUGINS_ENV, "") if value is None else value
    return [s.strip() for s in value.split(",") if s.strip()]


def _is_file_spec(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def import_plugins(specs: Iterable[str], source: str = "--import") -> list[str]:
    """Import plugin modules (``my_pkg.models``) or files (``path/to/models.py``) so that the
    models they register can be created by name. Importing one twice is a no-op. Returns the
    module names; raises :class:`PluginError` naming the plugin and ``source`` on failure."""
    names = []
    for spec in specs:
        key = str(Path(spec).expanduser().resolve()) if _is_file_spec(spec) else spec
        if key not in _imported_specs:
            _imported_specs[key] = _import_file(key, spec, source) if _is_file_spec(spec) else _import_module(spec, source)
        names.append(_imported_specs[key])
    return names


def add_plugins(specs: Iterable[str], source: str = "--import") -> list[str]:
    """:func:`import_plugins`, then add them to ``CTRLAB_PLUGINS`` so that processes started from
    this one (bench workers, data-parallel ranks) load them too. Files are stored as absolute paths."""
    resolved = [str(Path(s).expanduser().resolve()) if _is_file_spec(s) else s for s in specs]
    names = import_plugins(resolved, source)
    current = plugin_specs()
    os.environ[PLUGINS_ENV] = ",".join(current + [s for s in resolved if s not in current])
    return names


def _import_module(spec: str, source: str) -> str:
    try:
        importlib.import_module(spec)
    except Exception as exc:
        hint = (" (is it installed, or on PYTHONPATH? a file needs its path, ending in .py)"
                if isinstance(exc, ModuleNotFoundError) and exc.name == spec.split(".")[0] else "")
        raise PluginError(f"model plugin {spec!r} (from {source}) failed to import: "
                          f"{type(exc).__name__}: {exc}{hint}") from exc
    return spec


def _import_file(path_str: str, spec: str, source: str) -> str:
    path = Path(path_str)
    if not path.is_file():
        raise PluginError(f"model plugin file {spec!r} (from {source}) does not exist")
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None:
        if getattr(loaded, "__file__", None) and Path(loaded.__file__).resolve() == path:
            return name
        raise PluginError(f"model plugin file {spec!r} (from {source}): a module named {name!r} is already "
                          f"imported from {getattr(loaded, '__file__', None) or 'elsewhere'}; rename the file")
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise PluginError(f"model plugin file {spec!r} (from {source}) failed to import: "
                          f"{type(exc).__name__}: {exc}") from exc
    _file_modules[name] = str(path)
    return name


def _load_entry_points() -> None:
    from .base import CTRModel

    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "an installed package"
        where = f"entry point {ep.name} = {ep.value!r} (group {ENTRY_POINT_GROUP!r}, package {dist})"
        try:
            obj = ep.load()
        except Exception as exc:
            raise PluginError(f"{where} failed to load: {type(exc).__name__}: {exc}; fix or uninstall "
                              f"the package") from exc
        if inspect.isclass(obj):
            if not issubclass(obj, CTRModel):
                raise PluginError(f"{where} names {obj.__qualname__}, which is not a ctrlab.models.CTRModel")
            if _REGISTRY.get(obj.__name__.lower()) is not obj:
                register(obj)
        elif not inspect.ismodule(obj):
            raise PluginError(f"{where} must name a module or a model class, not a {type(obj).__name__}")


def load_plugins() -> None:
    """Load the entry points (once) and the modules of ``CTRLAB_PLUGINS`` not imported yet."""
    global _entry_points_state
    if _entry_points_state == "to load":
        _entry_points_state = "loading"  # a plugin may look models up while it imports
        try:
            _load_entry_points()
        except BaseException:
            _entry_points_state = "to load"  # fail again at the next lookup, not silently
            raise
        _entry_points_state = "loaded"
    specs = plugin_specs()
    if specs:
        import_plugins(specs, source=f"{PLUGINS_ENV}")


def plugin_source(cls: type) -> str | None:
    """What to pass to ``--import`` (or ``CTRLAB_PLUGINS``) for a model class defined outside
    ctrlab: its module, or the file it was loaded from; None for ctrlab's own models."""
    module = cls.__module__
    if module == "ctrlab" or module.startswith("ctrlab."):
        return None
    return _file_modules.get(module, module)
