"""Arguments shared by several subcommands, and their resolution."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from avvp.errors import AvvpError

ANNOTATIONS_ENV = "AVVP_ANNOTATIONS"
ANNOTATIONS_SOURCE = (
    "the LLP annotation files (AVVP_*.csv) are in the data/ folder of the HAN authors' repository "
    "(github.com/YapengTian/AVVP-ECCV20)"
)


def add_annotations_arg(parser: argparse.ArgumentParser) -> None:
    """`--annotations DIR`, falling back to $AVVP_ANNOTATIONS."""
    parser.add_argument(
        "--annotations",
        metavar="DIR",
        help=f"folder holding the LLP annotation CSVs (AVVP_train.csv, AVVP_eval_audio.csv, ...); "
        f"default: ${ANNOTATIONS_ENV}",
    )
    add_skip_bad_rows_arg(parser)


def add_skip_bad_rows_arg(parser: argparse.ArgumentParser) -> None:
    """`--skip-bad-rows`, which the annotation readers' errors suggest: every command reading a CSV takes it."""
    parser.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="skip annotation rows that cannot be read (with a warning counting them) instead of failing",
    )


def resolve_annotations(value: str | None) -> Path:
    """The annotation folder from the flag or the environment, or a clear error saying where to get it."""
    value = value or os.environ.get(ANNOTATIONS_ENV)
    if not value:
        raise AvvpError(f"no annotation folder: pass --annotations DIR or set ${ANNOTATIONS_ENV}; {ANNOTATIONS_SOURCE}")
    path = Path(value)
    if not path.is_dir():
        raise AvvpError(f"annotation folder {path} does not exist; {ANNOTATIONS_SOURCE}")
    return path


def add_early_stopping_args(parser: argparse.ArgumentParser) -> None:
    """`--patience N` and `--min-epochs N`: validation-based early stopping (TrainConfig.stops_after)."""
    parser.add_argument(
        "--patience",
        type=int,
        metavar="N",
        help="early stopping: end the run after N epochs without a better validation segment Type@AV (the best "
        "epoch is kept and tested as always; default: never stop early)",
    )
    parser.add_argument(
        "--min-epochs",
        type=int,
        default=0,
        metavar="N",
        help="early stopping counts epochs without a better score only after the first N (MGN's class tokens "
        "start at zero and stall for ~600 steps); only with --patience (default: %(default)s)",
    )


def check_at_least_one(args: argparse.Namespace, *names: str) -> None:
    """Refuse, in one line, the first of these integer flags (argparse names, e.g. "batch_size") set below 1; one
    not given (None) passes."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise AvvpError(f"--{name.replace('_', '-')} {value}: must be at least 1")


def early_stopping_from_args(args: argparse.Namespace) -> dict:
    """The TrainConfig fields of `add_early_stopping_args`' flags, checked."""
    check_at_least_one(args, "patience")
    if args.min_epochs < 0:
        raise AvvpError(f"--min-epochs {args.min_epochs}: must be at least 0")
    if args.min_epochs and args.patience is None:
        raise AvvpError(f"--min-epochs {args.min_epochs}: only with --patience (early stopping)")
    return {"patience": args.patience, "min_epochs": args.min_epochs}


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    """`--device auto|cpu|cuda|cuda:N`."""
    parser.add_argument(
        "--device",
        default="auto",
        help="where to run: auto (cuda if available, else cpu), cpu, cuda or cuda:N (default: auto)",
    )


def resolve_device(value: str):
    """A torch.device from `--device`, with a clear error where CUDA is asked for but missing."""
    import torch

    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except RuntimeError as err:
        raise AvvpError(f"--device {value!r} is not a device (use auto, cpu, cuda or cuda:N)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AvvpError(f"--device {value}: CUDA is not available on this machine (use --device cpu)")
    return device


def check_denoise_flags(args: argparse.Namespace) -> None:
    """`--denoise-from-epoch` other than its default says when JoMoLD starts removing labels: only with
    `--noise-ratios` (refused without it, since it would change nothing but what a resume compares)."""
    from avvp.recipe import TrainConfig

    if args.denoise_from_epoch != TrainConfig().denoise_from_epoch and not args.noise_ratios:
        raise AvvpError(f"--denoise-from-epoch {args.denoise_from_epoch}: only with --noise-ratios")


def add_assign_args(parser: argparse.ArgumentParser) -> None:
    """`--unimodal-assign` / `--crossmodal-assign` for imported authors' MGN checkpoints."""
    for which in ("unimodal", "crossmodal"):
        parser.add_argument(
            f"--{which}-assign",
            choices=["soft", "hard"],
            default=None,
            help=f"MGN {which} assignment for an authors' checkpoint, which does not record it (default: soft); "
            "an avvp checkpoint keeps its own unless this is given",
        )


# Model flags of MGN's and HAN's config fields (`--model-arg KEY=VALUE` sets any field of any registered model).
MODEL_FLAGS: tuple[tuple[str, type | None, list[str] | None, str], ...] = (
    ("dim", int, None, "model width (MGN default 128, HAN 512)"),
    ("depth_audio", int, None, "MGN: SelfBlocks in the audio CUG (default 3)"),
    ("depth_visual", int, None, "MGN: SelfBlocks in the visual CUG (default 3)"),
    ("depth_av", int, None, "MGN: SelfBlocks in the MCG (default 6)"),
    ("unimodal_assign", None, ["soft", "hard"], "MGN: CUG assignment (default soft)"),
    ("crossmodal_assign", None, ["soft", "hard"], "MGN: MCG assignment (default soft)"),
    ("drop_path", float, None, "MGN: stochastic depth rate (default 0.1)"),
    ("dropout", float, None, "HAN: dropout rate (default 0.1)"),
)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Model configuration flags: MGN's and HAN's fields by name, and `--model-arg KEY=VALUE` for any model's."""
    group = parser.add_argument_group("model", "model configuration (defaults: the papers')")
    for name, kind, choices, text in MODEL_FLAGS:
        group.add_argument("--" + name.replace("_", "-"), type=kind, choices=choices, help=text)
    group.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a field of the model's config, e.g. --model-arg hidden=64 for a plugin's model (repeatable; the "
        "value is converted to the field's type; `avvp models` lists each model's fields)",
    )


def model_overrides(args: argparse.Namespace, model: str) -> dict:
    """The model flags that were given, as config overrides; a flag of a field the model lacks is an error."""
    from avvp.models.registry import config_fields, get_spec, parse_model_args

    spec = get_spec(model, where="--model: ")
    given = {name: getattr(args, name) for name, *_ in MODEL_FLAGS if getattr(args, name, None) is not None}
    other = sorted(set(given) - set(config_fields(spec)))
    if other:
        flags = ", ".join("--" + n.replace("_", "-") for n in other)
        raise AvvpError(f"{flags}: not an option of {spec.title}")
    return given | parse_model_args(model, getattr(args, "model_arg", []))


def parse_loss_weights(items: list[str]) -> dict[str, float]:
    """`--loss-weight NAME=W` items as {term: weight} (checked against the model's terms when training starts)."""
    weights = {}
    for item in items:
        name, sep, text = item.partition("=")
        try:
            weight = float(text)
        except ValueError:
            weight = float("nan")
        if not sep or not name.strip() or not 0 <= weight < float("inf"):
            raise AvvpError(f"--loss-weight {item!r}: expected NAME=W with a weight W >= 0, e.g. audio_tokens=0.5")
        weights[name.strip()] = weight
    return weights


def add_inference_args(parser: argparse.ArgumentParser) -> None:
    """The flags of commands that run a checkpoint over features: checkpoint, features, batching, precision."""
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="avvp checkpoint or authors' .pt file")
    parser.add_argument(
        "--features",
        required=True,
        metavar="PATH",
        help="features: a folder in the official layout (vggish/, res152/, r2plus1d_18/), a pack, or a folder of packs",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=128,
        help="videos per batch (default: 128; larger batches are no faster on a CPU)",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="fp32",
        help="fp32 (default: reproduces the authors' forward pass to 1e-5), or bf16 autocast (faster on GPUs, "
        "probabilities within 0.05 of fp32, tests/test_precision.py); auto = bf16 on CUDA, fp32 elsewhere",
    )
    add_assign_args(parser)
    add_device_arg(parser)
