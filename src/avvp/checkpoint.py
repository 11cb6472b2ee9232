"""Checkpoints: ours (safetensors + JSON) and the authors' (`MGN_Net.pt`, `MMIL_Net.pt`: plain state dicts).

Our checkpoint is `NAME.safetensors` (the weights; the header also records model, config and metadata) with
`NAME.json` beside it (the same record, readable by people and scripts). The authors' checkpoints are imported
through ONE key-mapping function, `official_to_avvp`, after which the state dict loads strictly; the model and its
sizes are recognised from the keys and shapes, and the assignment kinds (which weights cannot tell) are given by
the caller. `official_state_dict` maps back, so our models run in the authors' scripts. What a model's authors' format
looks like is declared in the registry (`avvp.models.registry.OfficialFormat`, MGN's and HAN's in
`avvp.models.official`); this module applies it to whichever registered model has one.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from avvp import __version__
from avvp.data.classes import CLASSES
from avvp.data.sniff import file_kind
from avvp.errors import AvvpError
from avvp.models import count_parameters
from avvp.models.registry import (
    PLUGINS_ENV,
    ModelSpec,
    config_fields,
    config_to_dict,
    create_model,
    get_spec,
    make_config,
    spec_of,
    specs,
)
from avvp.utils import atomic_path, atomic_torch_save

log = logging.getLogger(__name__)

FORMAT = "avvp-checkpoint"
FORMAT_VERSION = 1
_HEADER_KEY = "avvp_checkpoint"  # safetensors header metadata entry holding the JSON record

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile


def _rename(key: str, pairs: tuple[tuple[str, str], ...]) -> str | None:
    for source, target in pairs:
        if source.endswith("."):
            if key.startswith(source):
                return target + key[len(source) :]
        elif key == source:
            return target
    return None


def _official_format(spec: ModelSpec):
    if spec.official is None:
        raise AvvpError(f"{spec.title} has no authors' checkpoint format (none was registered for it)")
    return spec.official


def official_to_avvp(state_dict: dict[str, Tensor], model_name: str) -> tuple[dict[str, Tensor], list[str]]:
    """THE mapping of an authors' state dict to our key names: returns (mapped, dropped keys).

    Modules the authors' forward never uses (HAN's) are dropped; any other key without a mapping is kept as is, so
    that the strict load reports it as unexpected.
    """
    official = _official_format(get_spec(model_name))
    mapped: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in state_dict.items():
        if official.dropped_prefixes and key.startswith(official.dropped_prefixes):
            dropped.append(key)
            continue
        mapped[_rename(key, official.key_map) or key] = value
    return mapped, dropped


def official_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Our model's weights under the authors' key names, in their order (the inverse of `official_to_avvp`).

    The modules the authors' forward never uses (HAN's) are added (LayerNorm weights 1, everything else 0),
    because the authors' scripts load strictly.
    """
    spec = spec_of(model)
    official = _official_format(spec)
    inverse = tuple((ours, theirs) for theirs, ours in official.key_map)
    exported: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        name = _rename(key, inverse)
        if name is None:
            raise AvvpError(f"{spec.title} weight {key!r} has no key in the authors' format")
        exported[name] = value.detach().cpu().clone().contiguous()
    if official.unused_shapes is not None:
        for key, shape in official.unused_shapes(model.config).items():
            fill = torch.ones if re.search(r"norm\d\.weight$", key) else torch.zeros
            exported[key] = fill(shape, dtype=torch.float32)
    if official.key_order:

        def rank(key: str) -> int:
            return next(i for i, prefix in enumerate(official.key_order) if key.startswith(prefix))

        exported = dict(sorted(exported.items(), key=lambda item: rank(item[0])))  # sort is stable
    return exported


def export_official(model: nn.Module, path: str | Path) -> None:
    """Save `model` as the authors' plain state dict (`torch.save`), atomically."""
    atomic_torch_save(official_state_dict(model), path)


def save_checkpoint(path: str | Path, model: nn.Module, *, metadata: dict | None = None) -> None:
    """Save `model` to `path` (NAME.safetensors) and its record to NAME.json beside it, both atomically.

    The record (model name, resolved config, class list, avvp version, `metadata`, e.g. epoch and scores) is
    also stored in the safetensors header, so the weights file alone is enough to load the model.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise AvvpError(f"{path}: an avvp checkpoint is written as NAME.safetensors (with NAME.json beside it)")
    from safetensors.torch import save

    spec = spec_of(model)
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": spec.name,
        "model_module": spec.module,  # a plugin's: named in the error where it is not loaded
        "config": config_to_dict(model.config),
        "cross_modal": bool(getattr(model, "cross_modal", True)),  # False: trained in its cross-modal-free form
        "classes": list(CLASSES),
        "avvp_version": __version__,
        "parameters": count_parameters(model),
        "metadata": metadata or {},
    }
    text = json.dumps(record, indent=2) + "\n"
    weights = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    # Serialised in memory and written by Python: a full disk is then an OSError that atomic_path reports in one
    # line (safetensors' own file writer raises its own error type). Both files are complete on disk before
    # either is renamed into place.
    data = save(weights, metadata={_HEADER_KEY: json.dumps(record)})
    with atomic_path(path) as weights_tmp, atomic_path(path.with_suffix(".json")) as json_tmp:
        weights_tmp.write_bytes(data)
        json_tmp.write_text(text, encoding="utf-8")


def load_model(
    path: str | Path,
    *,
    unimodal_assign: str | None = None,
    crossmodal_assign: str | None = None,
    config_overrides: dict[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Load one of our checkpoints or an authors' one; returns (model in eval mode, info).

    `config_overrides` set config fields the file does not fix: an authors' checkpoint does not record the fields
    its format declares `unrecorded` (MGN's assignment kinds: default soft); ours record every field, and a given
    value overrides the recorded one (with a warning). `unimodal_assign` / `crossmodal_assign` are two such
    overrides by name (`--unimodal-assign`). A field the model does not have is ignored with a warning.
    info: `format` ('avvp' or 'official'), `model`, `config`, `cross_modal` (and `cross_modal_recorded`: whether the
    file says so, else True is assumed), `dropped_keys`, `metadata` (ours),
    `path`.
    """
    path = Path(path)
    kind = _sniff_format(path)
    if kind == "safetensors":
        state_dict, record = _read_avvp(path)
        _check_finite(state_dict, path)
        name, config_values, fmt = record["model"], dict(record["config"]), "avvp"
        dropped: list[str] = []
        metadata, cross_modal = record.get("metadata", {}), bool(record.get("cross_modal", True))
    else:
        raw = _read_torch(path)
        name, naming = _recognise(raw, path)
        state_dict, dropped = official_to_avvp(raw, name) if naming == "official" else (raw, [])
        unused = set(dropped)
        _check_finite({key: value for key, value in raw.items() if key not in unused}, path)  # the file's key names
        config_values, fmt, metadata, cross_modal = _infer_config(state_dict, name, path), naming, {}, True
        if dropped:
            modules = sorted(
                {key.split(".layers.")[0] if ".layers." in key else key.rsplit(".", 1)[0] for key in dropped}
            )
            log.info(
                "%s: dropped %d weights of modules the forward never uses: %s", path, len(dropped), ", ".join(modules)
            )
    named = {"unimodal_assign": unimodal_assign, "crossmodal_assign": crossmodal_assign}
    overrides = dict(config_overrides or {}) | {key: value for key, value in named.items() if value is not None}
    config_values |= _given_overrides(get_spec(name), overrides, config_values if fmt == "avvp" else {}, path)
    try:
        config = make_config(name, **config_values)
    except AvvpError as err:
        raise AvvpError(f"{path}: {err}") from err
    with torch.device("cpu"):
        model = create_model(name, cross_modal=cross_modal, **config_to_dict(config))
    _load_strict(model, state_dict, path)
    model.to(map_location).eval()
    info = {
        "format": fmt,
        "path": str(path),
        "model": name,
        "config": config_to_dict(config),
        "cross_modal": cross_modal,
        "cross_modal_recorded": kind == "safetensors",  # other files do not say: `cross_modal` is then assumed
        "dropped_keys": dropped,
        "metadata": metadata,
    }
    return model, info


def _given_overrides(
    spec: ModelSpec, overrides: dict[str, Any], recorded: dict[str, Any], path: Path
) -> dict[str, Any]:
    """The config overrides given (not None) that the model has; warns of those it lacks and of recorded values
    they replace."""
    given = {key: value for key, value in overrides.items() if value is not None}
    fields = config_fields(spec)
    foreign = sorted(key for key in given if key not in fields)
    if foreign:
        log.warning("%s: %s has no %s; ignoring it", path, spec.title, ", ".join(foreign))
    for key in fields:
        if key in given and recorded.get(key) not in (None, given[key]):
            log.warning("%s: %s %s overrides the checkpoint's %s", path, key, given[key], recorded[key])
    return {key: value for key, value in given.items() if key in fields}


# ---------------------------------------------------------------------------------------------- reading


def _sniff_format(path: Path) -> str:
    """'safetensors' or 'torch' from the first bytes (not the suffix), or a clear error."""
    if not path.is_file():
        raise AvvpError(f"checkpoint {path} does not exist")
    with path.open("rb") as handle:
        head = handle.read(9)
    if not head:
        raise AvvpError(f"checkpoint {path} is empty")
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"  # torch.save: a zip archive, or a legacy pickle
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"  # 8-byte header length, then the JSON header
    raise AvvpError(
        f"{path} is {file_kind(path)}, not a checkpoint avvp can read: neither an avvp .safetensors file nor a "
        "torch.save state dict (the authors' MGN_Net.pt / MMIL_Net.pt)"
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def saved_epoch(path: str | Path) -> int | None:
    """The epoch recorded inside one of our checkpoints' header (`metadata.epoch`, as `train` saves it); None for
    a file that is missing, unreadable or has no epoch. Reads the header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            record = json.loads((handle.metadata() or {}).get(_HEADER_KEY, "{}"))
    except Exception:  # noqa: BLE001 (missing, truncated, corrupt, bad JSON: safetensors has its own error types)
        return None
    metadata = record.get("metadata") if isinstance(record, dict) else None
    epoch = metadata.get("epoch") if isinstance(metadata, dict) else None
    return epoch if isinstance(epoch, int) else None


def _read_avvp(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Weights and record of one of our checkpoints (the record from the header, else from the JSON beside it)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            state_dict = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except Exception as err:  # safetensors raises its own error types for truncated / corrupt files
        raise AvvpError(f"cannot read {path} (truncated or corrupt?): {_first_line(err)}") from err
    json_path = path.with_suffix(".json")
    record = None
    source = f"{path} (the record in its header)"  # where the record came from, for errors: only files that exist
    if _HEADER_KEY in header:
        try:
            record = json.loads(header[_HEADER_KEY])
        except json.JSONDecodeError as err:
            raise AvvpError(f"{path}: the checkpoint record in its header is not valid JSON ({err})") from err
    if json_path.is_file():
        try:
            beside = json.loads(json_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            if record is None:
                raise AvvpError(f"{json_path} is not valid JSON ({err})") from err
            log.warning("%s is not valid JSON; using the record inside %s", json_path, path.name)
            beside = None
        if record is None:
            record, source = beside, str(json_path)
        elif beside is not None and beside != record:
            log.warning(
                "%s does not match the record inside %s (edited, or an interrupted save); using the latter",
                json_path,
                path.name,
            )
    if record is None:
        raise AvvpError(f"{path} holds no avvp record and {json_path.name} is missing beside it: cannot tell the model")
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("model"), str)
        or not isinstance(record.get("config"), dict)
    ):
        raise AvvpError(f"{source}: not an avvp checkpoint record (needs 'model' and 'config')")
    _check_registered(record, source)
    classes = record.get("classes")
    if classes is not None and list(classes) != list(CLASSES):
        raise AvvpError(f"{source}: the checkpoint's class list differs from LLP's 25 classes in their order")
    return state_dict, record


def _unsafe_object(err: BaseException) -> str | None:
    """The Python object that torch.load(weights_only=True) refused, when that is why it failed (else None)."""
    text = str(err)
    if not text.startswith("Weights only load failed"):
        return None
    match = re.search(r"GLOBAL ([\w.]+)", text)
    return f"the Python object {match.group(1)}" if match else "Python objects other than tensors"


def _numpy_array_globals() -> list[Any]:
    """What unpickling a plain numpy array needs (e.g. `np.random.get_state()` saved beside the weights, as the
    JoMoLD authors' checkpoints hold it): array reconstruction and dtypes only, nothing that runs other code."""
    import numpy as np

    return [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def safe_torch_load(path: str | Path) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, its errors one line that never advises unpickling.

    Besides tensors, plain numpy arrays are allowed (`_numpy_array_globals`). PyTorch's own message for a file
    holding other Python objects suggests `weights_only=False`, which runs whatever code the file carries; that
    advice is never passed on.
    """
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (truncated zip, bad pickle, disallowed objects: all different errors)
        # Raised `from None`, so that not even a traceback passes torch's advice on.
        unsafe = _unsafe_object(err)
        if unsafe is not None:
            raise AvvpError(
                f"{path} is not a plain tensor checkpoint and cannot be read safely: it holds {unsafe}; avvp reads "
                "only state dicts of tensors and never unpickles other objects"
            ) from None
        reason = _first_line(err).split(". ")[0].rstrip(".")  # torch appends paragraphs of advice
        if isinstance(err, EOFError):
            reason = "the file ends early"
        elif "weights_only" in reason:
            reason = type(err).__name__
        raise AvvpError(f"cannot read {path} (truncated or corrupt?): {reason}") from None


def _read_torch(path: Path) -> dict[str, Tensor]:
    """A plain state dict from a torch.save file, with weights_only=True; wrapper prefixes stripped."""
    loaded = safe_torch_load(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise AvvpError(f"{path} does not hold a state dict (a dict of tensors)")
    return strip_wrapper_prefixes(loaded)


def strip_wrapper_prefixes(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove the `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes, in any combination."""
    stripped = {}
    for key, value in state_dict.items():
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        stripped[key] = value
    return stripped


def _check_finite(state_dict: dict[str, Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinity (a diverged run): they would predict NaN for every video."""
    bad = []
    for key, value in state_dict.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            nan, inf = int(torch.isnan(value).sum()), int(torch.isinf(value).sum())
            counts = ", ".join(f"{count} {label}" for count, label in ((nan, "NaN"), (inf, "inf")) if count)
            bad.append(f"{key} ({counts} of {value.numel()})")
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise AvvpError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN or infinity: {', '.join(bad[:3])}{more}; "
            "the checkpoint is broken (saved from a diverged run?)"
        )


def _check_registered(record: dict[str, Any], source: str) -> None:
    """The record's model must be registered: a plugin's model that is not loaded is one clear error."""
    name, module = record["model"], record.get("model_module")
    if name in {spec.name for spec in specs()}:
        return
    if isinstance(module, str) and not (module == "avvp" or module.startswith("avvp.")):
        raise AvvpError(
            f"{source}: its model {name!r} comes from the plugin module {module!r}, which is not loaded; "
            f"set {PLUGINS_ENV}={module} (with the module importable) or install the plugin"
        )
    get_spec(name, where=f"{source}: not an avvp checkpoint record of a registered model: ")


def _recognise(state_dict: dict[str, Tensor], path: Path) -> tuple[str, str]:
    """(model name, key naming 'official' or 'avvp') from the keys, asking each model with an authors' format."""
    keys = state_dict.keys()
    for spec in specs():
        naming = spec.official.recognise(keys) if spec.official is not None else None
        if naming is not None:
            return spec.name, naming
    known = ", ".join(spec.title for spec in specs() if spec.official is not None)
    sample = ", ".join(list(keys)[:4])
    raise AvvpError(f"{path}: not a state dict of a model with a known format ({known}); its first keys: {sample}")


def _infer_config(state_dict: dict[str, Tensor], name: str, path: Path) -> dict[str, Any]:
    """The size fields of the config from the shapes of a state dict in our key names."""
    spec = get_spec(name)
    try:
        return _official_format(spec).infer_config(state_dict)
    except (KeyError, IndexError) as err:
        raise AvvpError(f"{path}: cannot tell the {spec.title} size, weight {err} is missing or malformed") from err


def _load_strict(model: nn.Module, state_dict: dict[str, Tensor], path: Path) -> None:
    """load_state_dict(strict=True), with a one-line error naming a few missing / unexpected / misshapen keys."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    misshapen = [
        f"{key} {list(state_dict[key].shape)} (expected {list(value.shape)})"
        for key, value in expected.items()
        if key in state_dict and state_dict[key].shape != value.shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{more}")
    if problems:
        raise AvvpError(f"{path}: weights do not fit {spec_of(model).title} {model.config}: {'; '.join(problems)}")
    model.load_state_dict(state_dict, strict=True)
