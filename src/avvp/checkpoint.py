"""Checkpoints: ours (safetensors + JSON) and the authors' (`MGN_Net.pt`, `MMIL_Net.pt`: plain state dicts).

Our checkpoint is `NAME.safetensors` (the weights; the header also records model, config and metadata) with
`NAME.json` beside it (the same record, readable by people and scripts). The authors' checkpoints are imported
through ONE key-mapping function, `official_to_avvp`, after which the state dict loads strictly; the model and its
sizes are recognised from the keys and shapes, and the assignment kinds (which weights cannot tell) are given by
the caller. `official_state_dict` maps back, so our models run in the authors' scripts.
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
from avvp.models import MODEL_NAMES, count_parameters, create_model, make_config
from avvp.utils import atomic_path, atomic_torch_save

log = logging.getLogger(__name__)

FORMAT = "avvp-checkpoint"
FORMAT_VERSION = 1
_HEADER_KEY = "avvp_checkpoint"  # safetensors header metadata entry holding the JSON record

# (authors' key prefix, our key prefix), matched at the start of a key; the first match wins.
# A prefix without a trailing dot is a whole key.
_MGN_KEY_MAP: tuple[tuple[str, str], ...] = (
    ("audio_token", "audio_class_tokens"),
    ("visual_token", "visual_class_tokens"),
    ("fc_a.", "audio_proj."),
    ("fc_v.", "visual_fusion.res152_proj."),
    ("fc_st.", "visual_fusion.r2plus1d_proj."),
    ("fc_fusion.", "visual_fusion.fuse."),
    ("audio_cug.blocks.", "audio_cug.blocks."),
    ("audio_cug.han_encoder.", "audio_cug.visual_grouping."),
    ("audio_cug.grouping.", "audio_cug.class_grouping."),
    ("visual_cug.blocks.", "visual_cug.blocks."),
    ("visual_cug.grouping.", "visual_cug.class_grouping."),
    ("av_mcg.", "mcg."),
    ("fc_prob.", "av_head."),
    ("fc_prob_a.", "audio_head."),
    ("fc_prob_v.", "visual_head."),
    ("fc_cls.", "class_head."),
)
_HAN_KEY_MAP: tuple[tuple[str, str], ...] = (
    ("fc_prob.", "segment_head."),
    ("fc_frame_att.", "temporal_attention."),
    ("fc_av_att.", "modality_attention."),
    ("fc_a.", "audio_proj."),
    ("fc_v.", "visual_fusion.res152_proj."),
    ("fc_st.", "visual_fusion.r2plus1d_proj."),
    ("fc_fusion.", "visual_fusion.fuse."),
    ("hat_encoder.layers.0.self_attn.", "hybrid_attention.self_attn."),
    ("hat_encoder.layers.0.cm_attn.", "hybrid_attention.cross_attn."),
    ("hat_encoder.layers.0.linear1.", "hybrid_attention.ffn.fc1."),
    ("hat_encoder.layers.0.linear2.", "hybrid_attention.ffn.fc2."),
    ("hat_encoder.layers.0.norm1.", "hybrid_attention.norm1."),
    ("hat_encoder.layers.0.norm2.", "hybrid_attention.norm2."),
)
_KEY_MAPS = {"mgn": _MGN_KEY_MAP, "han": _HAN_KEY_MAP}
# Modules of the authors' HAN that its forward never uses: dropped on import.
_HAN_UNUSED_PREFIXES = ("audio_encoder.", "visual_encoder.", "cmt_encoder.", "hat_encoder.norm1.", "hat_encoder.norm2.")
# The authors' HAN key order (their module order), used to order an export like their file.
_HAN_OFFICIAL_ORDER = (
    ("fc_prob.", "fc_frame_att.", "fc_av_att.", "fc_a.", "fc_v.", "fc_st.", "fc_fusion.")
    + _HAN_UNUSED_PREFIXES[:3]
    + ("hat_encoder.layers.", "hat_encoder.norm")
)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile


def _rename(key: str, pairs: tuple[tuple[str, str], ...]) -> str | None:
    for source, target in pairs:
        if source.endswith("."):
            if key.startswith(source):
                return target + key[len(source) :]
        elif key == source:
            return target
    return None


def official_to_avvp(state_dict: dict[str, Tensor], model_name: str) -> tuple[dict[str, Tensor], list[str]]:
    """THE mapping of an authors' state dict to our key names: returns (mapped, dropped keys).

    HAN's unused modules are dropped; any other key without a mapping is kept as is, so that the strict load
    reports it as unexpected.
    """
    mapped: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in state_dict.items():
        if model_name == "han" and key.startswith(_HAN_UNUSED_PREFIXES):
            dropped.append(key)
            continue
        mapped[_rename(key, _KEY_MAPS[model_name]) or key] = value
    return mapped, dropped


def official_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Our model's weights under the authors' key names, in their order (the inverse of `official_to_avvp`).

    For HAN the modules its forward never uses are added (LayerNorm weights 1, everything else 0), because the
    authors' scripts load strictly.
    """
    inverse = tuple((ours, theirs) for theirs, ours in _KEY_MAPS[model.name])
    exported: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        official = _rename(key, inverse)
        if official is None:
            raise AvvpError(f"{model.name} weight {key!r} has no key in the authors' format")
        exported[official] = value.detach().cpu().clone().contiguous()
    if model.name == "han":
        from avvp.models.han import official_unused_shapes

        for key, shape in official_unused_shapes(model.config).items():
            fill = torch.ones if re.search(r"norm\d\.weight$", key) else torch.zeros
            exported[key] = fill(shape, dtype=torch.float32)

        def rank(key: str) -> int:
            return next(i for i, prefix in enumerate(_HAN_OFFICIAL_ORDER) if key.startswith(prefix))

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

    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.name,
        "config": model.config.to_dict(),
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
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Load one of our checkpoints or an authors' one; returns (model in eval mode, info).

    `unimodal_assign` / `crossmodal_assign` ('soft' / 'hard') set MGN's assignment kinds: authors' checkpoints do
    not record them (default soft); ours do, and a given value overrides the recorded one.
    info: `format` ('avvp' or 'official'), `model`, `config`, `dropped_keys`, `metadata` (ours), `path`.
    """
    path = Path(path)
    kind = _sniff_format(path)
    if kind == "safetensors":
        state_dict, record = _read_avvp(path)
        _check_finite(state_dict, path)
        name, config_values, fmt = record["model"], dict(record["config"]), "avvp"
        dropped: list[str] = []
        metadata = record.get("metadata", {})
    else:
        raw = _read_torch(path)
        name, naming = _recognise(raw, path)
        state_dict, dropped = official_to_avvp(raw, name) if naming == "official" else (raw, [])
        unused = set(dropped)
        _check_finite({key: value for key, value in raw.items() if key not in unused}, path)  # the file's key names
        config_values, fmt, metadata = _infer_config(state_dict, name, path), naming, {}
        if dropped:
            modules = sorted(
                {key.split(".layers.")[0] if ".layers." in key else key.rsplit(".", 1)[0] for key in dropped}
            )
            log.info(
                "%s: dropped %d weights of modules the forward never uses: %s", path, len(dropped), ", ".join(modules)
            )
    assign = {"unimodal_assign": unimodal_assign, "crossmodal_assign": crossmodal_assign}
    assign = {key: value for key, value in assign.items() if value is not None}
    if name == "mgn":
        for key, value in assign.items():
            if fmt == "avvp" and config_values.get(key) not in (None, value):
                log.warning("%s: %s %s overrides the checkpoint's %s", path, key, value, config_values[key])
            config_values[key] = value
    elif assign:
        log.warning("%s: HAN has no assignment; ignoring %s", path, ", ".join(sorted(assign)))

    try:
        config = make_config(name, **config_values)
    except AvvpError as err:
        raise AvvpError(f"{path}: {err}") from err
    with torch.device("cpu"):
        model = create_model(name, **config.to_dict())
    _load_strict(model, state_dict, path)
    model.to(map_location).eval()
    info = {
        "format": fmt,
        "path": str(path),
        "model": name,
        "config": config.to_dict(),
        "dropped_keys": dropped,
        "metadata": metadata,
    }
    return model, info


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
        or record.get("model") not in MODEL_NAMES
        or not isinstance(record.get("config"), dict)
    ):
        raise AvvpError(f"{source}: not an avvp checkpoint record (needs 'model' in {MODEL_NAMES} and 'config')")
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


def safe_torch_load(path: str | Path) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, its errors one line that never advises unpickling.

    PyTorch's own message for a file holding Python objects suggests `weights_only=False`, which runs whatever
    code the file carries; that advice is never passed on.
    """
    try:
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


def _recognise(state_dict: dict[str, Tensor], path: Path) -> tuple[str, str]:
    """(model name, key naming 'official' or 'avvp') from the keys."""
    keys = state_dict.keys()
    if "audio_token" in keys or any(key.startswith("av_mcg.") for key in keys):
        return "mgn", "official"
    if any(key.startswith("hat_encoder.") for key in keys):
        return "han", "official"
    if "audio_class_tokens" in keys:
        return "mgn", "avvp"
    if any(key.startswith("hybrid_attention.") for key in keys):
        return "han", "avvp"
    sample = ", ".join(list(keys)[:4])
    raise AvvpError(
        f"{path}: not an MGN or HAN state dict (no 'audio_token' / 'av_mcg.*' or 'hat_encoder.*' keys); "
        f"its first keys: {sample}"
    )


def _count_blocks(state_dict: dict[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(match.group(1)) for key in state_dict if (match := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _infer_config(state_dict: dict[str, Tensor], name: str, path: Path) -> dict[str, Any]:
    """The size fields of the config from the shapes of a state dict in our key names."""
    try:
        if name == "mgn":
            return {
                "dim": int(state_dict["audio_class_tokens"].shape[1]),
                "depth_audio": _count_blocks(state_dict, "audio_cug.blocks."),
                "depth_visual": _count_blocks(state_dict, "visual_cug.blocks."),
                "depth_av": _count_blocks(state_dict, "mcg.blocks."),
            }
        return {
            "dim": int(state_dict["audio_proj.weight"].shape[0]),
            "ff_dim": int(state_dict["hybrid_attention.ffn.fc1.weight"].shape[0]),
        }
    except (KeyError, IndexError) as err:
        raise AvvpError(f"{path}: cannot tell the {name.upper()} size, weight {err} is missing or malformed") from err


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
        raise AvvpError(f"{path}: weights do not fit {model.name.upper()} {model.config}: {'; '.join(problems)}")
    model.load_state_dict(state_dict, strict=True)
