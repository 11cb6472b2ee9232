"""`avvp sweep depth|assign|models`: train the configurations of the MGN paper's Table 1 or 2, or registered models at
their defaults, over seeds; write the table."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from avvp.cli.common import (
    add_annotations_arg,
    add_early_stopping_args,
    check_at_least_one,
    check_denoise_flags,
    early_stopping_from_args,
    parse_loss_weights,
    resolve_annotations,
)
from avvp.recipe import TrainConfig

if TYPE_CHECKING:
    from avvp.sweep import PlannedRun, SweepConfig

KINDS_HELP = {
    "depth": "Table 1: HAN and MGN with CUG/MCG depths (1,1,2), (2,2,4), (3,3,6), (4,4,8), (3,3,3), (6,6,3)",
    "assign": "Table 2: MGN (3,3,6) with Softmax or Hard-Softmax assignment in the CUG and in the MCG",
    "models": "registered models (built-in or plugins) at their default configurations, one row each",
}
KINDS_DESCRIPTION = {
    "models": "Train each registered model named by --configs (built-in, or a plugin's: see `avvp models`; plugins "
    "are found through $AVVP_PLUGINS) at its default configuration, with no override but --dim, once per seed, "
    "each run in OUT/<model>-seed<k>/; then write OUT/table.md and OUT/table.csv, titled 'Registered models at their "
    "default configurations': one row per model, its Method column the model's title, no configuration columns. "
    "Example: avvp sweep models --configs han,mgn,mymodel --features DIR --annotations DIR --out OUT",
}
CONFIGS_HELP = {
    "depth": "comma-separated subset of the rows to train (default: all): han, mgn-1-1-2, mgn-2-2-4, mgn-3-3-6, "
    "mgn-4-4-8, mgn-3-3-3, mgn-6-6-3",
    "assign": "comma-separated subset of the rows to train (default: all): mgn-3-3-6 (Softmax/Softmax), "
    "mgn-3-3-6-soft-hard, mgn-3-3-6-hard-soft, mgn-3-3-6-hard-hard",
    "models": "comma-separated registered model names, one row each in this order, e.g. han,mgn,mymodel (default: "
    "every registered model, built-in first, then the plugins'; `avvp models` lists them). An unknown name is an "
    "error listing the registered ones",
}
ROW_EXAMPLES = {
    "depth": "han, mgn-3-3-6, ...",
    "assign": "mgn-3-3-6, mgn-3-3-6-hard-soft, ...",
    "models": "han, mgn, ...",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="reproduce the paper's Table 1 (depths) or Table 2 (assignment), or compare registered models: train "
        "every row over seeds",
        description="Train every configuration of a table of the MGN paper (depth, assign), or registered models at "
        "their default configurations (models), once per seed, each run in OUT/<config>-seed<k>/ (a normal "
        "`avvp train` run folder), then write OUT/table.md and OUT/table.csv (test split, mean ± std over seeds, best "
        "in bold). Resumable: run the same command again; finished runs are reused, a killed run continues from its "
        "last.pt (or restarts if it had none). On a cluster, --print-commands prints one command per unfinished run "
        "(the same sweep with --only RUN) for a scheduler's array job, and --table-only then collects the tables.",
    )
    kinds = parser.add_subparsers(dest="sweep_kind", metavar="KIND", required=True)
    for kind, help_text in KINDS_HELP.items():
        sub = kinds.add_parser(kind, help=help_text, description=KINDS_DESCRIPTION.get(kind, help_text + "."))
        _add_args(sub, kind)
        sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="print details")
        sub.set_defaults(func=run)


def _add_args(parser: argparse.ArgumentParser, kind: str) -> None:
    parser.add_argument(
        "--features", metavar="PATH",
        help="features: a folder in the official layout (vggish/, res152/, r2plus1d_18/) or packs from `avvp pack` "
        "(required unless --table-only)",
    )  # fmt: skip
    add_annotations_arg(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="sweep folder (run folders, logs, tables)")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated training seeds (default: 1,2,3)")
    recipe = TrainConfig()  # the flags' defaults: the authors' recipe, as `avvp train`'s
    parser.add_argument("--epochs", type=int, default=recipe.epochs, help="epochs per run (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=recipe.batch_size, help="batch size (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=recipe.lr, help="Adam learning rate (default: %(default)s)")
    parser.add_argument(
        "--lr-step", type=int, default=recipe.lr_step, metavar="N",
        help="StepLR: decay by --lr-gamma every N epochs (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--lr-gamma", type=float, default=recipe.lr_gamma, metavar="G",
        help="StepLR decay factor (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--loss-weight", action="append", default=[], metavar="NAME=W",
        help="weight of a loss term in every run (repeatable): p_av, p_a, p_v, and a model's own (MGN: audio_tokens, "
        "visual_tokens); default: each term's own (the authors' weights, all 1). A term that a model of the sweep "
        "lacks is an error before anything trains",
    )  # fmt: skip
    parser.add_argument("--max-train-videos", type=int, metavar="N", help="train on the first N training videos only")
    add_early_stopping_args(parser)
    parser.add_argument("--configs", metavar="NAMES", help=CONFIGS_HELP[kind])
    parser.add_argument(
        "--dim", type=int,
        help="model width of every run instead of each model's default (MGN 128, HAN 512): for quick trials; the "
        "Model Size column then shows the sizes at that width" + (
            " (a model whose config has no 'dim' field keeps its default)" if kind == "models" else ""),
    )  # fmt: skip
    parser.add_argument(
        "--precision", choices=["auto", "fp32", "bf16"], default="auto",
        help="fp32, or bf16 autocast; auto = bf16 on CUDA, fp32 elsewhere (default: auto)",
    )  # fmt: skip
    parser.add_argument(
        "--device", default=None,
        help="one device for every run: auto (cuda if available, else cpu), cpu, cuda or cuda:N (default: auto)",
    )  # fmt: skip
    parser.add_argument(
        "--devices", metavar="LIST",
        help="comma-separated devices, one worker process each, e.g. cuda:0,cuda:1 (several runs at once)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, metavar="N",
        help="worker processes (default: one per device); e.g. --workers 2 on CPU trains two runs at once, the "
        "cores split between them, or 2 per GPU with --devices. A worker is started once and trains one run "
        "(or stacked row) after another, with each one's log in OUT/logs/",
    )  # fmt: skip
    parser.add_argument(
        "--stack", action="store_true",
        help="train the seeds of each row of a stackable model (MGN; `avvp models` says which) together, as one "
        "stacked model (torch.func.vmap): one call per layer for all seeds. Each run keeps its own initial weights, "
        "batches and Adam; the drop-path and Gumbel noise comes from one stream shared by the seeds. The rows of "
        "other models (HAN) train one run at a time. Pays where per-call cost dominates (GPUs, small models); see "
        "bench/README.md",
    )  # fmt: skip
    parser.add_argument(
        "--modality-labels", metavar="TEMPLATE",
        help="train every run on modality labels (`avvp refine-labels`, see `avvp train --modality-labels`): one "
        f"file, or a template with {{name}} (the row: {ROW_EXAMPLES[kind]}) and {{seed}}, e.g. "
        "'labels/{name}-seed{seed}.csv' for labels refined by each row's own base run of that seed, or "
        "'labels/han-seed{seed}.csv' for HAN's labels in every row",
    )  # fmt: skip
    parser.add_argument(
        "--noise-ratios", metavar="TEMPLATE",
        help="JoMoLD label denoising in every run (`avvp estimate-noise`, see `avvp train --noise-ratios`): one "
        f"NOISE.json, or a template with {{name}} (the row: {ROW_EXAMPLES[kind]}) and {{seed}}, e.g. "
        "'noise/han-seed{seed}.json' for the ratios estimated by HAN's run of that seed in every row. Each file's "
        "SHA-256 is recorded in its run's config.json: a finished run of another file is refused, not reused. "
        "With --stack, each seed of a stacked row ranks its own batches with its own model and file",
    )  # fmt: skip
    parser.add_argument(
        "--denoise-from-epoch", type=int, default=recipe.denoise_from_epoch, metavar="N",
        help="with --noise-ratios: remove labels from epoch N on (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--table-only", action="store_true", help="train nothing: write the tables from the runs already finished"
    )
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument(
        "--only", metavar="RUN",
        help="train this one run of the sweep (a run folder's name, e.g. mgn-3-3-6-seed2) in this process, with the "
        "sweep's rules (reused if finished, resumed from last.pt, a folder of another recipe refused), under its run "
        "folder's lock: several --only processes may work in one sweep folder at once, one per run. Writes no table "
        "(collect them with --table-only) and OUT/sweep.json only where there is none; not with --workers, --devices "
        "or --stack",
    )  # fmt: skip
    cluster.add_argument(
        "--print-commands", action="store_true",
        help="train nothing: check every run folder, write OUT/sweep.json and print one command per unfinished run "
        "(this sweep with --only RUN, every setting and $AVVP_PLUGINS where needed), e.g. for a cluster's array job; "
        "nothing when every run is finished (said on stderr)",
    )  # fmt: skip


def _parse_seeds(text: str) -> list[int]:
    from avvp.errors import AvvpError

    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise AvvpError(f"--seeds {text!r}: expected comma-separated integers, e.g. 1,2,3") from err
    return seeds


def _devices(args: argparse.Namespace) -> list[str]:
    from avvp.cli.common import resolve_device
    from avvp.errors import AvvpError

    if args.devices and args.device:
        raise AvvpError("--device and --devices: give one of them")
    names = [name.strip() for name in args.devices.split(",") if name.strip()] if args.devices else []
    return [str(resolve_device(name)) for name in names or [args.device or "auto"]]


def plan_from_args(args: argparse.Namespace) -> tuple[list[SweepConfig], list[int], list[PlannedRun]]:
    """The sweep's rows, seeds and runs as its flags give them (`--only` commands are planned the same way)."""
    from avvp.sweep import plan_runs, sweep_configs

    names = [name.strip() for name in args.configs.split(",") if name.strip()] if args.configs else None
    configs = sweep_configs(args.sweep_kind, names)
    seeds = _parse_seeds(args.seeds)
    base = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_step=args.lr_step,
        lr_gamma=args.lr_gamma,
        precision=args.precision,
        max_train_videos=args.max_train_videos,
        loss_weights=parse_loss_weights(args.loss_weight),
        denoise_from_epoch=args.denoise_from_epoch,
        **early_stopping_from_args(args),
    )
    runs = plan_runs(configs, seeds, Path(args.out), base, dim=args.dim, modality_labels=args.modality_labels,
                     noise_ratios=args.noise_ratios)  # fmt: skip
    return configs, seeds, runs


def run(args: argparse.Namespace) -> int:
    import sys

    from avvp.errors import AvvpError
    from avvp.sweep import (
        check_run_files,
        collect_rows,
        collect_run_summaries,
        read_sweep_recipe,
        run_status,
        run_sweep,
        worker_devices,
        write_sweep_record,
        write_tables,
    )

    check_at_least_one(args, "epochs", "batch_size", "lr_step", "max_train_videos", "patience")
    for flag, value in (("--lr", args.lr), ("--lr-gamma", args.lr_gamma)):
        if not value > 0:
            raise AvvpError(f"{flag} {value}: must be positive")
    check_denoise_flags(args)
    if args.skip_bad_rows:
        raise AvvpError("--skip-bad-rows: not available for sweeps (training reads the annotation files strictly)")
    _check_cluster_flags(args)
    features = annotations = None  # a table needs only the finished runs' records, not the data
    if not args.table_only:
        if not args.features:
            raise AvvpError("--features: required to train (only --table-only works without the data)")
        features = Path(args.features).resolve()
        if not features.exists():
            raise AvvpError(f"--features {args.features}: does not exist")
        annotations = resolve_annotations(args.annotations).resolve()
    configs, seeds, runs = plan_from_args(args)
    out = Path(args.out)
    if args.only or args.print_commands:
        return _one_run_per_process(args, runs, features, annotations)
    failed: dict[str, str] = {}
    if not args.table_only:
        slots = worker_devices(_devices(args), args.workers)
        check_run_files(runs)
        for run in runs:  # a folder of another recipe stops the sweep before sweep.json is touched
            run_status(run, features, annotations)
        out.mkdir(parents=True, exist_ok=True)
        write_sweep_record(out, args.sweep_kind, runs, features, annotations, args.modality_labels, args.noise_ratios)
        report = run_sweep(runs, features=features, annotations=annotations, slots=slots, stack=args.stack)
        failed = report.failed
        print(
            f"sweep {args.sweep_kind}: {len(report.reused)} run(s) reused, {len(report.trained)} trained, "
            f"{len(report.resumed)} resumed, {len(failed)} failed"
        )
    rows = collect_rows(configs, runs)
    if not any(row.seeds for row in rows):
        raise AvvpError(f"{out}: no finished run (test_scores.json) to make a table from")
    md_path, csv_path = write_tables(
        out, args.sweep_kind, rows, seeds, recipe=read_sweep_recipe(out, runs), summaries=collect_run_summaries(runs)
    )
    print(md_path.read_text().split("\n## ")[0].rstrip())
    print(f"\ntables written to {md_path} and {csv_path}")
    for name, reason in failed.items():
        print(f"avvp sweep: run {name} failed: {reason}", file=sys.stderr)
    return 1 if failed else 0


def _check_cluster_flags(args: argparse.Namespace) -> None:
    """--only and --print-commands: one run per process, on one device; not with the flags of this machine's
    parallelism (--workers, --devices, --stack), nor with --table-only."""
    from avvp.errors import AvvpError

    flag = "--only" if args.only else "--print-commands" if args.print_commands else None
    if flag is None:
        return
    given = [name for name, value in (("--table-only", args.table_only), ("--workers", args.workers is not None),
                                      ("--devices", args.devices), ("--stack", args.stack)) if value]  # fmt: skip
    if given:
        raise AvvpError(
            f"{flag}: one run per process on one device, so not with {', '.join(given)} (give --device to choose "
            "the device; --table-only collects the tables once the runs are finished)"
        )


def _one_run_per_process(args: argparse.Namespace, runs: list[PlannedRun], features: Path, annotations: Path) -> int:
    """--only RUN (train that run here) or --print-commands (the --only command of every unfinished run)."""
    import sys

    from avvp.cli.common import resolve_device
    from avvp.sweep import (
        check_run_files,
        only_commands,
        run_status,
        select_run,
        train_only,
        write_sweep_record,
    )

    out = runs[0].run_dir.parent
    if args.only:
        run = select_run(runs, args.only)
        check_run_files([run])
        run_status(run, features, annotations)  # a folder of another recipe is refused before anything is written
        device = str(resolve_device(args.device or "auto"))
        out.mkdir(parents=True, exist_ok=True)
        write_sweep_record(out, args.sweep_kind, runs, features, annotations, args.modality_labels, args.noise_ratios,
                           only_if_absent=True)  # fmt: skip
        outcome = train_only(run, features=features, annotations=annotations, device=device)
        said = {"reused": "finished already, nothing to do", "trained": "trained", "resumed": "resumed and finished"}
        print(f"sweep {args.sweep_kind} --only {run.name}: {said[outcome]} (collect the tables with --table-only)")
        return 0
    check_run_files(runs)
    todo = [run for run in runs if run_status(run, features, annotations) != "done"]  # every folder checked first
    out.mkdir(parents=True, exist_ok=True)
    write_sweep_record(out, args.sweep_kind, runs, features, annotations, args.modality_labels, args.noise_ratios)
    for line in only_commands(args.sweep_kind, runs, todo, features=features, annotations=annotations, dim=args.dim,
                              modality_labels=args.modality_labels, noise_ratios=args.noise_ratios,
                              device=args.device):  # fmt: skip
        print(line)
    if todo:
        print(f"avvp sweep: {len(todo)} command(s), one per unfinished run of {len(runs)}", file=sys.stderr)
    else:
        print(f"avvp sweep: every run of {out} is finished: no command to print (collect the tables with "
              "--table-only)", file=sys.stderr)  # fmt: skip
    return 0
