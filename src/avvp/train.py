"""Training with the authors' recipe (spec section 3): in-memory batches, validation each epoch, resume, DDP.

The whole split is held as tensors (ResNet-152 frames averaged per second, which is the same model since the
linear layer commutes with the mean), shuffled by an index permutation drawn from a dedicated generator, so an
epoch does no per-sample Python work. Under `torchrun` each process takes its shard of every global batch and
DistributedDataParallel averages the gradients; the loss is scaled so that the result equals one process with the
same global batch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avvp import __version__
from avvp.checkpoint import save_checkpoint
from avvp.config import ConfigMixin
from avvp.data.annotations import Split, load_split
from avvp.data.classes import NUM_CLASSES
from avvp.data.features import Features
from avvp.data.store import open_features
from avvp.errors import AvvpError
from avvp.inference import autocast, predict, resolve_precision
from avvp.metrics import Scores, evaluate, parse_predictions
from avvp.models import ParseOutput, create_model
from avvp.utils import atomic_torch_save, atomic_write_text

log = logging.getLogger(__name__)

PROB_EPS = 1e-7  # probabilities are clamped to [eps, 1 - eps] before BCE, as in the authors' code


@dataclass(frozen=True)
class TrainConfig(ConfigMixin):
    """The training recipe; defaults are the authors' (spec section 3)."""

    model: str = "mgn"  # "mgn" or "han"
    epochs: int = 40  # passes over the training split
    batch_size: int = 16  # global batch size (split across processes under torchrun)
    lr: float = 3e-4  # Adam learning rate
    lr_step: int = 10  # StepLR: decay every this many epochs
    lr_gamma: float = 0.1  # StepLR decay factor
    visual_target_scale: float = 0.9  # the visual video-level target is scale * y + shift (label smoothing)
    visual_target_shift: float = 0.05
    seed: int = 1  # seeds initialisation, shuffling, dropout and Gumbel noise
    eval_batch_size: int = 128  # batch size for validation and test prediction
    precision: str = "auto"  # fp32, bf16 or auto (bf16 on CUDA, fp32 elsewhere)
    compile: bool = False  # wrap the model in torch.compile
    cuda_graphs: bool = False  # capture the whole training step in a CUDA graph (CUDA, one process)
    stream: bool = False  # read each batch from disk (DataLoader) instead of holding the train split in memory
    loader_workers: int = 2  # DataLoader worker processes when streaming
    max_train_videos: int | None = None  # use only the first N training videos (smoke tests, demos)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # MGNConfig / HANConfig fields


@dataclass
class DistributedContext:
    """Where this process stands under torchrun (world size 1 without it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group torchrun set up (gloo on CPU, nccl on CUDA); a no-op for one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0"))
    )


def clamp_bce(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample BCE (mean over classes) on clamped probabilities: [B, C] -> [B].

    Written out rather than F.binary_cross_entropy (the same value: the clamp keeps the logs above -16.2, inside
    its -100 floor) because that kernel kills a CUDA process with a device assert on a NaN input; here a NaN
    reaches the loss sums and `train` stops with a clear error instead.
    """
    probs = probs.float().clamp(PROB_EPS, 1 - PROB_EPS)
    return -(target * torch.log(probs) + (1 - target) * torch.log1p(-probs)).mean(dim=1)


def compute_losses(output: ParseOutput, labels: torch.Tensor, config: TrainConfig) -> dict[str, torch.Tensor]:
    """The recipe's loss terms, keyed by what they score: the BCE of the video-level probabilities `p_av`, `p_a`
    (against y) and `p_v` (against the smoothed 0.9 y + 0.05), each [B]; for MGN also the scalar cross-entropies
    `audio_tokens` and `visual_tokens` of class token i classified as class i."""
    visual_target = config.visual_target_scale * labels + config.visual_target_shift
    losses = {
        "p_av": clamp_bce(output.p_av, labels),
        "p_a": clamp_bce(output.p_a, labels),
        "p_v": clamp_bce(output.p_v, visual_target),
    }
    if output.audio_token_logits is not None:
        token_targets = torch.arange(NUM_CLASSES, device=labels.device)
        losses["audio_tokens"] = F.cross_entropy(output.audio_token_logits.float(), token_targets)
        losses["visual_tokens"] = F.cross_entropy(output.visual_token_logits.float(), token_targets)
    return losses


def token_scores(logits: torch.Tensor) -> dict[str, float]:
    """Precision, recall and F1 (macro over classes, in percent) of class token i classified as class i."""
    predicted = logits.argmax(dim=1).cpu().numpy()  # [25]
    truth = np.arange(len(predicted))
    precision, recall, f1 = [], [], []
    for cls in truth:
        tp = float(np.sum((predicted == cls) & (truth == cls)))
        n_pred = float(np.sum(predicted == cls))
        p = tp / n_pred if n_pred else 0.0
        r = tp  # exactly one token per class
        precision.append(p)
        recall.append(r)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    return {
        "precision": 100 * float(np.mean(precision)),
        "recall": 100 * float(np.mean(recall)),
        "f1": 100 * float(np.mean(f1)),
    }


def make_optimizer(model: nn.Module, lr: float, *, capturable: bool = False) -> torch.optim.Optimizer:
    """Adam as in the recipe, with the fused kernel where this torch has it (the same update, one kernel per step
    instead of several per parameter: on CPU this halves MGN's step time)."""
    options = {"capturable": True} if capturable else {}
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True, **options)
    except (RuntimeError, TypeError):  # older torch without fused Adam on this device
        return torch.optim.Adam(model.parameters(), lr=lr, **options)


@dataclass
class SplitData:
    """A split's annotations and its features held in memory."""

    split: Split
    features: Features | None  # None when streaming
    features_path: Path | None = None


def load_split_data(
    features_path: Path, annotations: Path, name: str, *, limit: int | None = None, stream: bool = False
) -> SplitData:
    """Annotations and in-memory features of one split (res152 averaged per second); with `stream`, the features
    are only checked to exist and are read batch by batch during training."""
    split = load_split(annotations, name)
    if limit is not None and limit < len(split.filenames):
        split = subset_split(split, limit)
    store = open_features(features_path)
    features = None if stream else store.load(split.video_ids, pooled=True, progress=True)
    return SplitData(split, features, Path(features_path))


class StreamedBatches(torch.utils.data.Dataset):
    """Batches read from disk for streaming training: item i is the i-th batch of the given index lists."""

    def __init__(self, features_path: Path, video_ids: list[str], labels: np.ndarray, batches: list[np.ndarray]):
        self.features_path, self.video_ids, self.labels, self.batches = features_path, video_ids, labels, batches
        self._store = None  # opened lazily in each worker process

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        if self._store is None:
            self._store = open_features(self.features_path)
        index = self.batches[i]
        features = self._store.load([self.video_ids[j] for j in index], pooled=True)
        arrays = (features.audio, features.res152, features.r2plus1d, self.labels[index])
        return tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays)


def subset_split(split: Split, limit: int) -> Split:
    """The first `limit` videos of a split."""
    return dataclasses.replace(
        split,
        filenames=split.filenames[:limit],
        labels=split.labels[:limit],
        audio=None if split.audio is None else split.audio[:limit],
        visual=None if split.visual is None else split.visual[:limit],
    )


def score_split(
    model: nn.Module, data: SplitData, *, batch_size: int, device: torch.device
) -> tuple[Scores, dict[str, np.ndarray]]:
    """Predict a whole split in batches (fp32, as `avvp evaluate` does, whatever the training precision) and score
    it with the official metrics."""
    predictions = predict(model, data.features, batch_size=batch_size, device=device, precision="fp32")
    pred_audio, pred_visual = parse_predictions(predictions["audio"], predictions["visual"], predictions["video"])
    return evaluate(pred_audio, pred_visual, data.split.audio, data.split.visual), predictions


def _rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "shuffle": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


class TrainStep:
    """One optimisation step on the videos at `index` of the in-memory training tensors (eager).

    Loss terms are summed per video on the device (no host synchronisation per step) and read once per epoch.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        tensors: tuple[torch.Tensor, ...],
        labels: torch.Tensor,
        config: TrainConfig,
        device: torch.device,
        precision: str,
        dist_ctx: DistributedContext,
    ) -> None:
        self.model, self.optimizer, self.tensors, self.labels = model, optimizer, tensors, labels
        self.config, self.device, self.precision, self.dist_ctx = config, device, precision, dist_ctx
        self.keys = ["p_av", "p_a", "p_v"] + (["audio_tokens", "visual_tokens"] if _is_mgn(model) else [])
        self.sums = torch.zeros(len(self.keys), dtype=torch.float64, device=device)

    def run(self, index: torch.Tensor, global_size: int, *, cache_autocast: bool = True) -> None:
        """One step on the videos at `index` of the in-memory tensors."""
        audio, res152, r2plus1d = (t.index_select(0, index).to(self.device, non_blocking=True) for t in self.tensors)
        labels = self.labels.index_select(0, index).to(self.device, non_blocking=True)
        self.step(audio, res152, r2plus1d, labels, global_size, cache_autocast=cache_autocast)

    def step(
        self,
        audio: torch.Tensor,
        res152: torch.Tensor,
        r2plus1d: torch.Tensor,
        labels: torch.Tensor,
        global_size: int,
        *,
        cache_autocast: bool = True,
    ) -> None:
        """Forward, loss, backward and optimiser step on one batch; adds its loss sums to `self.sums`."""
        with autocast(self.device, self.precision, cache_enabled=cache_autocast):
            output = self.model(audio, res152, r2plus1d)
        losses = compute_losses(output, labels, self.config)
        # Per-sample terms: sum over the shard / global batch size, times world size because DDP averages
        # gradients over processes; this equals the mean over the global batch in one process.
        per_sample = losses["p_av"] + losses["p_a"] + losses["p_v"]
        loss = per_sample.sum() / global_size * self.dist_ctx.world_size
        for key in self.keys[3:]:
            loss = loss + losses[key]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        local = len(labels)  # per-video sums; a per-step term (class tokens) counts once per video
        totals = [losses[k].detach().sum() if losses[k].dim() else losses[k].detach() * local for k in self.keys]
        self.sums += torch.stack(totals).double()

    def __call__(self, index: torch.Tensor, global_size: int) -> None:
        self.run(index, global_size)

    def take_sums(self) -> dict[str, float]:
        """The epoch's per-video loss sums (one host synchronisation), then reset."""
        values = self.sums.tolist()
        self.sums.zero_()
        return dict(zip(self.keys, values))


class GraphedTrainStep:
    """The same step captured whole (forward, backward, Adam) in a CUDA graph and replayed for full batches.

    Removes the per-kernel launch cost that dominates small-batch steps on a GPU. The first steps run eagerly
    (warm-up on a side stream: real training steps), then the step is captured and replayed with the batch's
    indices copied into a static buffer. The graph is captured again when the learning rate changes (it is baked
    into the captured Adam kernel). Partial batches run eagerly. CUDA only, one process, data on the GPU.
    """

    WARMUP_STEPS = 3

    def __init__(self, eager: TrainStep) -> None:
        self.eager = eager
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_lr: float | None = None
        self.static_index: torch.Tensor | None = None
        self.warmed_up = 0

    @classmethod
    def create(cls, eager: TrainStep) -> GraphedTrainStep | TrainStep:
        problems = []
        if eager.device.type != "cuda":
            problems.append("the device is not CUDA")
        if eager.dist_ctx.enabled:
            problems.append("training is distributed")
        if config_stream := eager.config.stream:
            problems.append("the training split is streamed from disk")
        if not config_stream and eager.tensors[0].device.type != "cuda":
            problems.append("the training features do not fit on the GPU")
        if problems:
            log.warning("--cuda-graphs ignored: %s", "; ".join(problems))
            return eager
        return cls(eager)

    def __call__(self, index: torch.Tensor, global_size: int) -> None:
        batch_size = self.eager.config.batch_size
        if len(index) != batch_size:
            self.eager(index, global_size)
            return
        if self.warmed_up < self.WARMUP_STEPS:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.eager.run(index, global_size, cache_autocast=False)
            torch.cuda.current_stream().wait_stream(side)
            self.warmed_up += 1
            return
        lr = self.eager.optimizer.param_groups[0]["lr"]
        if self.graph is None or lr != self.graph_lr:
            self._capture(index, global_size)
            self.graph_lr = lr
        self.static_index.copy_(index)
        self.graph.replay()

    def _capture(self, index: torch.Tensor, global_size: int) -> None:
        self.graph = None
        self.static_index = index.clone()
        self.eager.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.eager.run(self.static_index, global_size, cache_autocast=False)
        self.graph = graph

    def take_sums(self) -> dict[str, float]:
        return self.eager.take_sums()


def _is_mgn(model: nn.Module) -> bool:
    return getattr(_unwrap(model), "name", "") == "mgn"


@dataclass
class TrainResult:
    """What a finished run produced."""

    out_dir: Path
    best_epoch: int
    best_val_type: float
    test_scores: Scores | None
    train_seconds: float
    parameters: int


def train(
    config: TrainConfig,
    *,
    features: str | Path,
    annotations: str | Path,
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    resume: bool = False,
    progress: bool = True,
    val_features: str | Path | None = None,
) -> TrainResult:
    """Train one model with `config`, validating each epoch; keeps the best epoch and scores it on test.

    Writes into `out_dir`: config.json, metrics.jsonl (one line per epoch), best.safetensors/.json (best validation
    segment-level Type@AV), last.pt (full state for `--resume`), test_scores.json.
    """
    from avvp.metrics import format_scores
    from avvp.utils import progress_bar

    device = torch.device(device)
    dist_ctx = init_distributed(device)
    if dist_ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_ctx.local_rank)
        torch.cuda.set_device(device)
    precision = resolve_precision(config.precision, device)
    out_dir = Path(out_dir)
    features, annotations = Path(features), Path(annotations)
    state_path = out_dir / "last.pt"
    metrics_path = out_dir / "metrics.jsonl"
    if dist_ctx.is_main:
        if out_dir.exists() and any(out_dir.iterdir()) and not resume:
            raise AvvpError(f"{out_dir} is not empty: pass --resume to continue that run, or choose another --out")
        if resume and not state_path.exists():
            raise AvvpError(f"{state_path} does not exist: nothing to resume")
        out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    model = create_model(config.model, **config.model_overrides).to(device)
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = make_optimizer(model, config.lr, capturable=config.cuda_graphs and device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    shuffle_generator = torch.Generator().manual_seed(config.seed)

    train_data = load_split_data(features, annotations, "train", limit=config.max_train_videos, stream=config.stream)
    val_data = load_split_data(Path(val_features or features), annotations, "val") if dist_ctx.is_main else None

    start_epoch, best_epoch, best_type = 1, 0, -math.inf
    if resume:
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"], shuffle_generator, device)
        start_epoch, best_epoch, best_type = state["epoch"] + 1, state["best_epoch"], state["best_val_type"]
        if dist_ctx.is_main:
            _truncate_metrics(metrics_path, start_epoch)
        log.info("resuming %s at epoch %d (best so far: epoch %d)", out_dir, start_epoch, best_epoch)

    run_config = {
        "avvp_version": __version__,
        "train": config.to_dict(),
        "model": {"name": config.model, "config": model.config.to_dict()},
        "features": str(features),
        "annotations": str(annotations),
        "device": str(device),
        "precision": precision,
        "world_size": dist_ctx.world_size,
        "train_videos": len(train_data.split.filenames),
    }
    if dist_ctx.is_main:
        atomic_write_text(out_dir / "config.json", json.dumps(run_config, indent=2) + "\n")

    # Training tensors: on the device once when they fit (always on CPU), shuffled by index; or streamed.
    count = len(train_data.split.filenames)
    if config.stream:
        train_tensors = ()
        labels_all = torch.as_tensor(train_data.split.labels, dtype=torch.float32)
    else:
        train_tensors = _to_device_if_fits(train_data, device)
        labels_all = torch.as_tensor(train_data.split.labels, dtype=torch.float32).to(train_tensors[0].device)

    step_model: nn.Module = model
    if config.compile:
        step_model = torch.compile(step_model)
    if dist_ctx.enabled:
        step_model = nn.parallel.DistributedDataParallel(
            step_model, device_ids=[device.index] if device.type == "cuda" else None
        )

    stepper = TrainStep(step_model, optimizer, train_tensors, labels_all, config, device, precision, dist_ctx)
    if config.cuda_graphs:
        stepper = GraphedTrainStep.create(stepper)
    train_seconds = 0.0
    for epoch in range(start_epoch, config.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        order = torch.randperm(count, generator=shuffle_generator).to(labels_all.device)
        steps = math.ceil(count / config.batch_size)
        bar = progress_bar(
            range(steps), progress=progress and dist_ctx.is_main, desc=f"epoch {epoch}/{config.epochs}", unit="step"
        )
        batches = [order[i * config.batch_size : (i + 1) * config.batch_size] for i in range(steps)]
        if config.stream:
            loader = torch.utils.data.DataLoader(
                StreamedBatches(
                    train_data.features_path,
                    train_data.split.video_ids,
                    train_data.split.labels,
                    [b[dist_ctx.rank :: dist_ctx.world_size].numpy() for b in batches],
                ),
                batch_size=None,
                num_workers=config.loader_workers,
                pin_memory=device.type == "cuda",
            )
            for batch, inputs in zip(bar, loader):
                inputs = [t.to(device, non_blocking=True) for t in inputs]
                stepper.step(*inputs, len(batches[batch]))
        else:
            for step in bar:
                batch = batches[step]
                stepper(batch[dist_ctx.rank :: dist_ctx.world_size], len(batch))  # this process's shard
        sums = stepper.take_sums()
        if not all(math.isfinite(v) for v in sums.values()):
            raise AvvpError(
                f"training diverged: the loss is not finite in epoch {epoch} ({out_dir}); "
                "try --precision fp32 or a lower --lr"
            )
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        epoch_losses = _reduce_losses(sums, count, dist_ctx)
        epoch_train_seconds = time.perf_counter() - epoch_start
        train_seconds += epoch_train_seconds

        if dist_ctx.is_main:
            val_scores, _ = score_split(model, val_data, batch_size=config.eval_batch_size, device=device)
            record: dict[str, Any] = {
                "epoch": epoch,
                "lr": lr,
                "loss": epoch_losses,
                "val": {"segment": val_scores.segment, "event": val_scores.event},
                "train_seconds": epoch_train_seconds,
                "videos_per_second": count / epoch_train_seconds,
                "epoch_seconds": time.perf_counter() - epoch_start,
            }
            plain = _unwrap(model)
            tokens = _token_logits(plain, val_data, device)
            if tokens is not None:
                record["tokens"] = {"audio": token_scores(tokens[0]), "visual": token_scores(tokens[1])}
            _append_jsonl(metrics_path, record)
            type_score = val_scores.segment["type"]
            msg = (
                f"epoch {epoch}/{config.epochs}: loss {epoch_losses['total']:.4f}, val segment Type@AV "
                f"{type_score:.2f} Event@AV {val_scores.segment['event']:.2f} ({epoch_train_seconds:.0f} s)"
            )
            if type_score > best_type:
                best_type, best_epoch = type_score, epoch
                save_checkpoint(
                    out_dir / "best.safetensors",
                    plain,
                    metadata={"epoch": epoch, "val": record["val"], "train": config.to_dict()},
                )
                msg += " (best)"
            if progress:
                print(msg, flush=True)  # one line per epoch, also where no progress bar is drawn (logs, CI)
            atomic_torch_save(
                {
                    "model": plain.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(shuffle_generator, device),
                    "epoch": epoch,
                    "best_epoch": best_epoch,
                    "best_val_type": best_type,
                },
                state_path,
            )
        _barrier(dist_ctx)

    test_scores = None
    if dist_ctx.is_main:
        test_scores = _score_best_on_test(out_dir, features, annotations, config, device, precision)
        print(format_scores(test_scores))
    _barrier(dist_ctx)
    return TrainResult(out_dir, best_epoch, best_type, test_scores, train_seconds, parameters)


@torch.inference_mode()
def _token_logits(model: nn.Module, data: SplitData, device: torch.device) -> tuple[torch.Tensor, ...] | None:
    """MGN's class-token logits (they do not depend on the input; one video is run to get them)."""
    model.eval()
    one = tuple(
        torch.as_tensor(np.asarray(a[:1]), dtype=torch.float32).to(device)
        for a in (data.features.audio, data.features.res152, data.features.r2plus1d)
    )
    output = model(*one)
    if output.audio_token_logits is None:
        return None
    return output.audio_token_logits, output.visual_token_logits


def _score_best_on_test(
    out_dir: Path, features: Path, annotations: Path, config: TrainConfig, device: torch.device, precision: str
) -> Scores:
    from avvp.checkpoint import load_model

    model, _ = load_model(out_dir / "best.safetensors", map_location=device)
    test_data = load_split_data(features, annotations, "test")
    scores, _ = score_split(model, test_data, batch_size=config.eval_batch_size, device=device)
    meta = json.loads((out_dir / "best.json").read_text()).get("metadata", {})
    payload = {"segment": scores.segment, "event": scores.event, "best_epoch": meta.get("epoch")}
    atomic_write_text(out_dir / "test_scores.json", json.dumps(payload, indent=2) + "\n")
    return scores


def _to_device_if_fits(data: SplitData, device: torch.device) -> tuple[torch.Tensor, ...]:
    arrays = (data.features.audio, data.features.res152, data.features.r2plus1d)
    tensors = tuple(torch.as_tensor(np.asarray(a), dtype=torch.float32) for a in arrays)
    if device.type == "cuda":
        need = sum(t.numel() * 4 for t in tensors)
        free, _ = torch.cuda.mem_get_info(device)
        if need < 0.5 * free:
            return tuple(t.to(device) for t in tensors)
        return tuple(t.pin_memory() for t in tensors)
    return tensors


def _reduce_losses(sums: dict[str, float], count: int, ctx: DistributedContext) -> dict[str, float]:
    """Mean of each loss term over the epoch's videos (summed over processes)."""
    keys = sorted(sums)
    values = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    if ctx.enabled:
        import torch.distributed as dist

        dist.all_reduce(values)
    means = {k: float(v) / count for k, v in zip(keys, values)}
    means["total"] = sum(means.values())
    return means


def _barrier(ctx: DistributedContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _truncate_metrics(path: Path, start_epoch: int) -> None:
    """Drop metric lines of epochs that will be run again (written after the last saved state)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["epoch"] < start_epoch]
    atomic_write_text(path, "".join(line + "\n" for line in kept))
