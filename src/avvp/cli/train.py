"""`avvp train`: train a registered model (MGN, HAN or a plugin's) with the authors' recipe on features in the
official layout (or a pack)."""

from __future__ import annotations

import argparse
from pathlib import Path

from avvp.cli.common import (
    add_annotations_arg,
    add_device_arg,
    add_early_stopping_args,
    add_model_args,
    early_stopping_from_args,
    model_overrides,
    parse_loss_weights,
    resolve_annotations,
)
from avvp.recipe import TrainConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train MGN, HAN or a plugin's model (authors' recipe by default)",
        description="Train a registered model (MGN, HAN, or a plugin's: `avvp models`) on the LLP train split, "
        "validate every epoch with the official metrics, keep the best epoch by validation segment-level Type@AV and "
        "score it on test. Launch under torchrun (`torchrun --nproc_per_node N -m avvp train ...`) for multi-GPU / "
        "multi-process training.",
    )
    parser.add_argument(
        "--model",
        default=TrainConfig().model,
        help="a registered model: mgn, han, or a plugin's (found through $AVVP_PLUGINS or an installed package; "
        "`avvp models` lists them) (default: %(default)s)",
    )
    parser.add_argument(
        "--features",
        required=True,
        metavar="PATH",
        help="features: a folder in the official layout (vggish/, res152/, r2plus1d_18/) or packs from `avvp pack`",
    )
    add_annotations_arg(parser)
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (must be empty unless --resume)")
    recipe = TrainConfig()  # the flags' defaults: the authors' recipe
    parser.add_argument("--epochs", type=int, default=recipe.epochs, help="epochs (default: %(default)s)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=recipe.batch_size,
        help="global batch size, split across processes under torchrun (default: %(default)s)",
    )
    parser.add_argument("--lr", type=float, default=recipe.lr, help="Adam learning rate (default: %(default)s)")
    parser.add_argument(
        "--lr-step", type=int, default=recipe.lr_step, help="StepLR: decay every N epochs (default: %(default)s)"
    )
    parser.add_argument(
        "--lr-gamma", type=float, default=recipe.lr_gamma, help="StepLR decay factor (default: %(default)s)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=recipe.seed,
        help="seed of initialisation, shuffling, dropout and Gumbel noise (default: %(default)s)",
    )
    parser.add_argument(
        "--eval-batch-size",
        type=int,
        default=recipe.eval_batch_size,
        help="batch size for validation/test (default: %(default)s)",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default=recipe.precision,
        help="training precision: fp32, or bf16 autocast (the video-level probabilities and the loss stay fp32); "
        "auto = bf16 on CUDA, fp32 elsewhere; validation and test are scored in fp32; on a CPU without native bf16 "
        "(AVX2) bf16 is ~20x slower than fp32, and a warning says so (default: %(default)s)",
    )
    parser.add_argument("--compile", action="store_true", help="wrap the model in torch.compile")
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="CUDA, one process: capture the whole training step (forward, backward, Adam) in a CUDA graph and "
        "replay it; removes kernel-launch overhead at small batch sizes",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="read each training batch from disk (DataLoader workers) instead of holding the training split in "
        "memory: for data that does not fit; slower",
    )
    parser.add_argument(
        "--loader-workers",
        type=int,
        default=recipe.loader_workers,
        help="DataLoader worker processes with --stream (default: %(default)s)",
    )
    parser.add_argument("--max-train-videos", type=int, metavar="N", help="train on the first N training videos only")
    add_early_stopping_args(parser)
    parser.add_argument(
        "--modality-labels",
        metavar="LABELS.csv",
        help="train p_a on the audio labels and p_v on the visual labels of this file (`avvp refine-labels`; a "
        "weak label removed from the visual labels is a hard 0 in p_v's target) and p_av on the weak labels as "
        "before; the file's SHA-256 is recorded in config.json and --resume refuses another file",
    )
    parser.add_argument(
        "--noise-ratios",
        metavar="NOISE.json",
        help="JoMoLD (Cheng et al., ECCV 2022): in every batch, a no-grad pass of the model in its cross-modal-free "
        "form and eval mode ranks each label's loss per modality; per class, of the videos positive in a modality, "
        "floor(ratio x their number) with the largest loss there AND the smallest loss in the other modality lose "
        "that label for the step (`avvp estimate-noise` writes the ratios). Recorded in config.json with the file's "
        "SHA-256; --resume refuses another file. Not with --stream, --compile or --cuda-graphs",
    )
    parser.add_argument(
        "--denoise-from-epoch",
        type=int,
        default=recipe.denoise_from_epoch,
        metavar="N",
        help="with --noise-ratios: remove labels from epoch N on (default: %(default)s, the authors' code's "
        "effective schedule: nothing in the first epoch, the full ratios from the second)",
    )
    parser.add_argument(
        "--no-cross-modal",
        action="store_true",
        help="train the model's cross-modal-free form (HAN without its cross-modal attention, MGN without the audio "
        "CUG's grouping with the visual segments: p_a and p_v each see one modality); recorded in config.json and "
        "the checkpoints, so validation, test, predict, evaluate and refine-labels run that form too",
    )
    parser.add_argument(
        "--loss-weight",
        action="append",
        default=[],
        metavar="NAME=W",
        help="weight of a loss term (repeatable): p_av, p_a, p_v, and the model's own (MGN: audio_tokens, "
        "visual_tokens); default: each term's own (the authors' weights, all 1). A term of weight 0 is not "
        "computed. Recorded in config.json",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last epoch, with the settings it was trained with: any other "
        "learning rate, schedule, batch size, seed, model, precision or data is refused; safe to change (recorded "
        "in config.json and metrics.jsonl): more --epochs, --eval-batch-size, --loader-workers, --stream, --compile; "
        "a run ended by early stopping stays ended",
    )
    parser.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="also write each epoch's metrics and weighted loss terms as TensorBoard scalars into DIR (step: the "
        "epoch; best outside the run folder; one DIR per run, since a new run hides the events already in DIR); "
        "metrics.jsonl stays the record. A run option, not a setting: not in "
        "config.json, free to add, change or drop on --resume. Needs the tensorboard package: "
        "pip install tensorboard (the tensorboard extra)",
    )
    add_model_args(parser)
    add_device_arg(parser)
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The recipe the flags ask for (with no flags: `TrainConfig()`, the authors' recipe)."""
    return TrainConfig(
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_step=args.lr_step,
        lr_gamma=args.lr_gamma,
        seed=args.seed,
        eval_batch_size=args.eval_batch_size,
        precision=args.precision,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
        stream=args.stream,
        loader_workers=args.loader_workers,
        max_train_videos=args.max_train_videos,
        model_overrides=model_overrides(args, args.model),
        cross_modal=not args.no_cross_modal,
        loss_weights=parse_loss_weights(args.loss_weight),
        modality_labels=str(Path(args.modality_labels).resolve()) if args.modality_labels else None,
        noise_ratios=str(Path(args.noise_ratios).resolve()) if args.noise_ratios else None,
        denoise_from_epoch=args.denoise_from_epoch,
        **early_stopping_from_args(args),
    )


def run(args: argparse.Namespace) -> int:
    from avvp.cli.common import check_denoise_flags, resolve_device
    from avvp.training import train

    check_denoise_flags(args)
    config = config_from_args(args)
    result = train(
        config,
        features=args.features,
        annotations=resolve_annotations(args.annotations),
        out_dir=args.out,
        device=resolve_device(args.device),
        resume=args.resume,
        skip_bad_rows=args.skip_bad_rows,
        tensorboard=args.tensorboard,
    )
    if result.test_scores is not None:  # the main process (the others under torchrun have nothing to say)
        best = f"best epoch {result.best_epoch} (val segment Type@AV {result.best_val_type:.2f})"
        print(f"{best}; run folder {result.out_dir}")
    return 0
