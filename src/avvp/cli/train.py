"""`avvp train`: train MGN or HAN with the authors' recipe on features in the official layout (or a pack)."""

from __future__ import annotations

import argparse

from avvp.cli.common import add_annotations_arg, add_device_arg, add_model_args, model_overrides, resolve_annotations


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train MGN or HAN (authors' recipe by default)",
        description="Train MGN or HAN on the LLP train split, validate every epoch with the official metrics, keep "
        "the best epoch by validation segment-level Type@AV and score it on test. Launch under torchrun "
        "(`torchrun --nproc_per_node N -m avvp train ...`) for multi-GPU / multi-process training.",
    )
    parser.add_argument("--model", choices=["mgn", "han"], default="mgn", help="which model (default: mgn)")
    parser.add_argument(
        "--features",
        required=True,
        metavar="PATH",
        help="features: a folder in the official layout (vggish/, res152/, r2plus1d_18/) or packs from `avvp pack`",
    )
    add_annotations_arg(parser)
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (must be empty unless --resume)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs (default: 40)")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch size (default: 16)")
    parser.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (default: 3e-4)")
    parser.add_argument("--lr-step", type=int, default=10, help="StepLR step in epochs (default: 10)")
    parser.add_argument("--lr-gamma", type=float, default=0.1, help="StepLR decay factor (default: 0.1)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    parser.add_argument(
        "--eval-batch-size", type=int, default=128, help="batch size for validation/test (default: 128)"
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="fp32, or bf16 autocast; auto = bf16 on CUDA, fp32 elsewhere (default: auto)",
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
        "--loader-workers", type=int, default=2, help="DataLoader worker processes with --stream (default: 2)"
    )
    parser.add_argument("--max-train-videos", type=int, metavar="N", help="train on the first N training videos only")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    add_model_args(parser)
    add_device_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from avvp.cli.common import resolve_device
    from avvp.train import TrainConfig, train

    config = TrainConfig(
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
    )
    result = train(
        config,
        features=args.features,
        annotations=resolve_annotations(args.annotations),
        out_dir=args.out,
        device=resolve_device(args.device),
        resume=args.resume,
    )
    print(
        f"best epoch {result.best_epoch} (val segment Type@AV {result.best_val_type:.2f}); run folder {result.out_dir}"
    )
    return 0
