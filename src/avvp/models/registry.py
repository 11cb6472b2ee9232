"""The model registry: the one torch-free place where each model declares what the rest of avvp needs to know.

A model registers once, by name, with its config dataclass and a factory for its `nn.Module` (timm's form):

    @avvp.register_model("mymodel", config=MyConfig)
    class MyModel(torch.nn.Module):
        def __init__(self, config): ...
        def forward(self, audio, res152, r2plus1d) -> avvp.ParseOutput: ...

or, without importing torch until the model is built, with the factory named as "module:attribute"
(`register_model("mgn", config=MGNConfig, factory="avvp.models.mgn:MGN", ...)`: MGN and HAN register this way).
Everything else is optional: the authors' checkpoint format (`OfficialFormat`), extra loss terms (`LossTerm`), what
validation records, whether the seeds of a sweep row can be stacked, and a cross-modal-free form. The registry, not
the model, sets `model.name`, `model.config` and `model.cross_modal` on every model it builds, and serialises the
config. Code outside `avvp.models` asks the registry and never compares a model's name with a string.

Plugins: models defined outside the package are found through $AVVP_PLUGINS (comma-separated modules to import)
and the `avvp.models` entry-point group, loaded at the first lookup, so the CLI, Python and sweep workers see them.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from avvp.errors import AvvpError

log = logging.getLogger(__name__)

PLUGINS_ENV = "AVVP_PLUGINS"
ENTRY_POINT_GROUP = "avvp.models"
SAMPLE, STEP = "sample", "step"  # a loss term's kind: per video (mean over the global batch) or once per step

Ref = Callable[..., Any] | str  # a callable, or "module:attribute" imported at its first use


def resolve(ref: Ref) -> Any:
    """The object a `Ref` names ("package.module:attribute", imported now), or the callable itself."""
    if not isinstance(ref, str):
        return ref
    module_name, _, attribute = ref.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as err:
        raise AvvpError(f"cannot load {ref!r} ({_one_line(err)})") from None
    return target


@dataclass(frozen=True)
class LossTerm:
    """A named term of the training objective (`avvp.objective`).

    `fn(output, targets)` gets the model's `ParseOutput` and the batch's `avvp.objective.LossTargets` and returns a
    per-video loss [B] (`per="sample"`: averaged over the global batch) or a scalar (`per="step"`: added once per
    step). The weight is the default; `--loss-weight NAME=W` overrides it, and a term of weight 0 is not computed.
    A term off by default (weight 0, e.g. HAN's contrastive term) must not be the only path to any weight: DDP
    would wait for that weight's gradient (a term turned off by `--loss-weight` is refused under torchrun).
    """

    name: str
    fn: Ref
    per: str = SAMPLE
    weight: float = 1.0
    about: str = ""  # one line for `avvp models` and the docs

    def __post_init__(self) -> None:
        if self.per not in (SAMPLE, STEP):
            raise AvvpError(f"loss term {self.name!r}: per must be {SAMPLE!r} or {STEP!r}, not {self.per!r}")


@dataclass(frozen=True)
class OfficialFormat:
    """How a model's authors' checkpoints (plain `torch.save` state dicts under their key names) map to ours.

    `key_map` pairs (authors' prefix, our prefix), matched at the start of a key, first match wins; a prefix
    without a trailing dot is a whole key. `recognise(keys)` says whether a state dict is this model's under the
    authors' names ('official'), under ours ('avvp') or not at all (None). `infer_config(state_dict)` reads the
    config's size fields from the shapes of a state dict in our names; `unrecorded` are the config fields the
    weights cannot tell (given by the caller, else the defaults). `dropped_prefixes` name modules of the authors'
    model that its forward never uses (dropped on import); `unused_shapes(config)` gives their keys and shapes
    (written as placeholders on export, counted in the released size) and `key_order` the authors' key order.
    """

    file_name: str  # the authors' file, e.g. "MGN_Net.pt"
    key_map: tuple[tuple[str, str], ...]
    recognise: Callable[[Collection[str]], str | None]
    infer_config: Callable[[Mapping[str, Any]], dict[str, Any]]
    unrecorded: tuple[str, ...] = ()
    dropped_prefixes: tuple[str, ...] = ()
    unused_shapes: Callable[[Any], dict[str, tuple[int, ...]]] | None = None
    key_order: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """Everything avvp knows about one registered model."""

    name: str  # the registry key, e.g. "mgn"; `--model NAME`
    config: type  # its config dataclass (frozen; ConfigMixin or a plain dataclass)
    factory: Ref  # config -> nn.Module
    module: str  # the module that called `register_model`: recorded in checkpoints, imported by sweep workers
    title: str  # how tables and figures name it, e.g. "MGN"
    official: OfficialFormat | None = None  # the authors' checkpoint format, if any
    loss_terms: tuple[LossTerm, ...] = ()  # terms it adds to the objective (MGN: the class-token terms)
    validation_record: Ref | None = None  # (predictions, val Split) -> dict added to each metrics.jsonl line
    stackable: bool = False  # `avvp sweep --stack` may train its seeds as one vmapped model
    cross_modal_free: bool = False  # its forward takes `cross_modal=False` (no exchange between the modalities)
    about: str = ""  # one line for `avvp models`

    @property
    def builtin(self) -> bool:
        return self.module == "avvp" or self.module.startswith("avvp.")


_REGISTRY: dict[str, ModelSpec] = {}
_plugins_loaded = False


def register_model(
    name: str,
    *,
    config: type,
    factory: Ref | None = None,
    title: str | None = None,
    official: OfficialFormat | None = None,
    loss_terms: tuple[LossTerm, ...] | list[LossTerm] = (),
    validation_record: Ref | None = None,
    stackable: bool = False,
    cross_modal_free: bool = False,
    about: str | None = None,
) -> Any:
    """Register model `name`; a class decorator, or a direct call with `factory` ("module:attribute" or a callable).

    Registering the same name again from the same module and factory replaces the entry (a re-imported module);
    from elsewhere it is an error.
    """
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
        raise AvvpError(f"model name {name!r}: use letters, digits, '-' and '_'")
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise AvvpError(f"register_model({name!r}): config must be a dataclass type, not {config!r}")
    names = [term.name for term in loss_terms]
    if len(set(names)) != len(names):
        raise AvvpError(f"register_model({name!r}): a loss term is listed twice ({', '.join(names)})")
    module = sys._getframe(1).f_globals.get("__name__", "?")  # the registering module: what other processes import

    def add(target: Ref) -> Ref:
        doc = "" if isinstance(target, str) else (target.__doc__ or "").strip().split("\n")[0]
        spec = ModelSpec(
            name, config, target, module, title or name.upper(), official, tuple(loss_terms),
            validation_record, stackable, cross_modal_free, about if about is not None else doc,
        )  # fmt: skip
        existing = _REGISTRY.get(name)
        if existing is not None and (existing.module, _ref_name(existing.factory)) != (module, _ref_name(target)):
            raise AvvpError(f"model {name!r} is registered twice: by {existing.module} and by {module}")
        _REGISTRY[name] = spec
        return target

    return add if factory is None else add(factory)


def _ref_name(ref: Ref) -> str:
    return ref if isinstance(ref, str) else f"{getattr(ref, '__module__', '')}:{getattr(ref, '__qualname__', ref)}"


def load_plugins() -> None:
    """Import the plugin modules of $AVVP_PLUGINS and of the `avvp.models` entry points (once per process)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in plugin_modules_from_env():
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 (whatever the plugin raises: one line naming it)
            _plugins_loaded = False
            raise AvvpError(f"${PLUGINS_ENV}: cannot import the plugin module {module!r} ({_one_line(err)})") from None
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as err:  # noqa: BLE001 (an installed plugin that is broken must not stop avvp)
            log.warning("the avvp.models entry point %s (%s) failed to load: %s", entry.name, entry.value, err)


def plugin_modules_from_env() -> list[str]:
    return [part.strip() for part in os.environ.get(PLUGINS_ENV, "").split(",") if part.strip()]


def import_modules(modules: Collection[str]) -> None:
    """Import modules that registered models in another process (sweep workers), then the plugins."""
    for module in modules:
        importlib.import_module(module)
    load_plugins()


def plugin_modules() -> list[str]:
    """The importable modules of the registered models defined outside avvp (for worker processes)."""
    load_plugins()
    return sorted({spec.module for spec in _REGISTRY.values() if not spec.builtin and spec.module != "__main__"})


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def list_models() -> list[str]:
    """The registered model names, built-in first, then plugins in the order they registered."""
    load_plugins()
    return list(_REGISTRY)


def get_spec(name: str, *, where: str = "") -> ModelSpec:
    """The registered model `name`; an unknown name is one error listing the registered ones."""
    load_plugins()
    spec = _REGISTRY.get(name)
    if spec is None:
        hint = f" (a plugin's model? set ${PLUGINS_ENV} to its module)"
        raise AvvpError(f"{where}unknown model {name!r}; registered: {', '.join(_REGISTRY)}{hint}")
    return spec


def specs() -> list[ModelSpec]:
    load_plugins()
    return list(_REGISTRY.values())


# ---------------------------------------------------------------------------------------------------- configs


def config_fields(spec: ModelSpec) -> list[str]:
    return [field.name for field in dataclasses.fields(spec.config)]


def make_config(name: str, **overrides: Any) -> Any:
    """The resolved config of model `name`: its defaults with `overrides` (unknown keys are one error)."""
    spec = get_spec(name)
    unknown = sorted(set(overrides) - set(config_fields(spec)))
    if unknown:
        known = ", ".join(config_fields(spec)) or "none"
        raise AvvpError(f"unknown {spec.config.__name__} key(s) {', '.join(unknown)}; known: {known}")
    try:
        return spec.config(**overrides)
    except (TypeError, ValueError) as err:
        raise AvvpError(f"{spec.config.__name__}: {_one_line(err)}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """A model config as a JSON-ready dict (any dataclass), as config.json and checkpoints read it back (tuples
    become lists), so that a config compares equal to its own record."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def parse_model_args(name: str, items: Collection[str]) -> dict[str, Any]:
    """`--model-arg KEY=VALUE` items as config overrides, each VALUE converted to its field's type."""
    spec = get_spec(name)
    hints = _field_types(spec.config)
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise AvvpError(f"--model-arg {item!r}: expected KEY=VALUE")
        if key not in hints:
            raise AvvpError(f"--model-arg {key}: not a field of {spec.config.__name__} ({', '.join(hints) or 'none'})")
        values[key] = _convert(text.strip(), hints[key], f"--model-arg {key}")
    return values


def _field_types(config: type) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(config)
    except Exception:  # noqa: BLE001 (annotations that do not resolve: fall back to the defaults' types)
        hints = {}
    types_by_field = {}
    for field in dataclasses.fields(config):
        default = field.default if field.default is not dataclasses.MISSING else None
        types_by_field[field.name] = hints.get(field.name, type(default) if default is not None else str)
    return types_by_field


def _convert(text: str, kind: Any, where: str) -> Any:
    """`text` as a value of type `kind` (bool, int, float, str, or an optional of one)."""
    options = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
    if type(None) in options and text.lower() in ("none", "null"):
        return None
    for option in [o for o in options if o is not type(None)]:
        try:
            if option is bool:
                if text.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
                    return text.lower() in ("true", "1", "yes", "on")
                continue
            if option in (int, float, str):
                return option(text)
        except ValueError:
            continue
    names = ", ".join(getattr(o, "__name__", str(o)) for o in options)
    raise AvvpError(f"{where}={text!r}: not a value of type {names}")


# ---------------------------------------------------------------------------------------------------- models


def create_model(name: str, *, cross_modal: bool = True, **overrides: Any) -> Any:
    """Build model `name` with its default config plus `overrides`, freshly initialised (imports torch).

    The model carries `model.name`, its resolved `model.config` and `model.cross_modal` (False: every forward
    avvp runs of it is the cross-modal-free form, `forward(..., cross_modal=False)`; see `forward_kwargs`).
    """
    spec = get_spec(name)
    if not cross_modal and not spec.cross_modal_free:
        raise AvvpError(f"{spec.title} has no cross-modal-free form (--no-cross-modal)")
    config = make_config(name, **overrides)
    model = resolve(spec.factory)(config)
    model.name, model.config, model.cross_modal = spec.name, config, bool(cross_modal)
    return model


def unwrap(model: Any) -> Any:
    """The plain model under DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def spec_of(model: Any) -> ModelSpec:
    """The registry entry of a model (also under a DDP / torch.compile wrapper): by the name `create_model` gave
    it, else, for a model built from its class directly, by its class."""
    model = unwrap(model)
    name = getattr(model, "name", None)
    if isinstance(name, str):
        return get_spec(name)
    for spec in specs():
        if not isinstance(spec.factory, str) and type(model) is spec.factory:
            return spec
        if (
            isinstance(spec.factory, str)
            and _ref_name(spec.factory) == f"{type(model).__module__}:{type(model).__qualname__}"
        ):
            return spec
    raise AvvpError(f"{type(model).__name__} is not a registered model (build it with avvp.create_model)")


def forward_kwargs(model: Any) -> dict[str, Any]:
    """The keyword arguments of every forward avvp runs of `model`: `cross_modal=False` for a model made
    cross-modal-free (`create_model(..., cross_modal=False)`, a checkpoint of such a run), else none."""
    return {} if getattr(unwrap(model), "cross_modal", True) else {"cross_modal": False}
