"""Why does MGN's visual stream not learn on LLP-Synth? Measures the features and one training run.

    python bench/diagnose_mgn.py --data /work/scratch/v1_demo --out /work/scratch/diag_v1

`--data` is a data folder in LLP layout (AVVP_*.csv and feats/{vggish,res152,r2plus1d_18}/<id>.npy).

1. Variance decomposition of the segment features (val+test, dense labels), per feature space: E||x||^2 split into
   the common offset ||mu||^2, the share a least-squares regression on the segment's class-activity vector explains
   (audio labels for vggish, visual labels for res152 / r2plus1d_18), the per-video means of the regression
   residual, and the within-video residual (noise). The same for MGN's fused visual input (visual_fusion output)
   at initialisation and after training.
2. Trains MGN (default config) with the project's step (`avvp.steps.TrainStep`: `avvp.objective.Objective`, `make_optimizer`),
   fp32 on one CPU thread, StepLR(--lr-step, 0.1), and records every --every steps and at each epoch end: class-token
   geometry (pairwise cosine / distance, norm), the entropy of the visual (and audio) class assignment over the 25
   groups on a fixed batch of val videos (eval mode), the similarity of the assignment queries and keys, gradient
   norms per branch, and the loss terms. At each epoch end: val segment-level scores and linear probes (held-out AUC
   of a per-class L2 logistic regression predicting "class c visible in the video") on the grouped visual class
   tokens x_v[:, c], on the time-averaged fused visual input, and on p_v itself; probes use val+test videos, fitted
   on the even rows and scored on the odd rows.

Writes --out/diagnosis.json and prints one summary line per epoch.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avvp.data.features import Features
from avvp.data.splits import SplitData, load_split_data
from avvp.distributed import DistributedContext
from avvp.inference import predict
from avvp.metrics import evaluate, parse_predictions
from avvp.models import create_model
from avvp.steps import TrainStep, make_optimizer
from avvp.training import TrainConfig

BRANCHES = (
    "audio_proj",
    "visual_fusion",
    "audio_cug",
    "visual_cug",
    "mcg",
    "av_head",
    "audio_head",
    "visual_head",
    "class_head",
    "audio_class_tokens",
    "visual_class_tokens",
)
NUM_CLASSES = 25
PROBE_L2 = 1e-2  # L2 penalty of the probes (per-sample mean BCE + PROBE_L2 / 2 * ||w||^2, standardised inputs)


# ---------------------------------------------------------------- 1. variance decomposition


def variance_shares(x: np.ndarray, activity: np.ndarray) -> dict[str, float]:
    """Shares (percent) of E||x||^2: offset, per-class (linear in the activity), per-video, noise.

    x [N, T, D] segment features, activity [N, T, 25] 0/1 class activity of the same segments. The four parts are
    orthogonal: regression with intercept, then per-video means of its residual, then the within-video rest.
    """
    n, t, d = x.shape
    flat = x.reshape(n * t, d).astype(np.float64)
    total = float(np.sum(flat**2))
    mu = flat.mean(axis=0)
    centred = flat - mu
    labels = activity.reshape(n * t, -1).astype(np.float64)
    labels = labels - labels.mean(axis=0)
    coef, *_ = np.linalg.lstsq(labels, centred, rcond=None)  # [25, D]
    explained = labels @ coef
    residual = (centred - explained).reshape(n, t, d)
    video_means = residual.mean(axis=1, keepdims=True)  # [N, 1, D]
    parts = {
        "offset": n * t * float(np.sum(mu**2)),
        "class": float(np.sum(explained**2)),
        "video": t * float(np.sum(video_means**2)),
        "noise": float(np.sum((residual - video_means) ** 2)),
    }
    return {name: 100.0 * value / total for name, value in parts.items()}


def feature_decomposition(features: Features, audio: np.ndarray, visual: np.ndarray) -> dict[str, dict[str, float]]:
    """Variance shares of each raw feature space (res152 is already averaged per second)."""
    return {
        "vggish": variance_shares(features.audio, audio),
        "res152": variance_shares(features.res152, visual),
        "r2plus1d_18": variance_shares(features.r2plus1d, visual),
    }


# ---------------------------------------------------------------- probes and AUC


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half)."""
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None, :]).mean()
    equal = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * equal)


def mean_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes (with both outcomes present) of the AUC of scores[:, c] for targets[:, c]."""
    values = [
        auc(scores[:, c], targets[:, c]) for c in range(targets.shape[1]) if 0 < targets[:, c].sum() < len(targets)
    ]
    return float(np.mean(values)) if values else float("nan")


def fit_probes(x_fit: torch.Tensor, y_fit: torch.Tensor, x_eval: torch.Tensor) -> torch.Tensor:
    """One L2 logistic regression per class, fitted jointly by LBFGS (the objective is separable).

    x_fit [N, C, D] (class c's input is x[:, c]), y_fit [N, C] -> held-out logits [M, C] for x_eval [M, C, D].
    """
    mean, std = x_fit.mean(0), x_fit.std(0) + 1e-6
    x_fit, x_eval = (x_fit - mean) / std, (x_eval - mean) / std
    weight = torch.zeros(x_fit.shape[1], x_fit.shape[2], dtype=torch.float64, requires_grad=True)  # [C, D]
    bias = torch.zeros(x_fit.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = torch.einsum("ncd,cd->nc", x_fit, weight) + bias
        loss = F.binary_cross_entropy_with_logits(logits, y_fit, reduction="none").mean(0).sum()
        loss = loss + 0.5 * PROBE_L2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return torch.einsum("ncd,cd->nc", x_eval, weight) + bias


def probe_auc(inputs: np.ndarray, visible: np.ndarray) -> float:
    """Held-out mean AUC of per-class probes: inputs [N, 25, D] or [N, D] (shared by all classes), visible [N, 25]."""
    x = torch.as_tensor(inputs, dtype=torch.float64)
    if x.ndim == 2:
        x = x.unsqueeze(1).expand(-1, NUM_CLASSES, -1)
    y = torch.as_tensor(visible, dtype=torch.float64)
    logits = fit_probes(x[0::2], y[0::2], x[1::2])
    return mean_auc(logits.numpy(), visible[1::2])


# ---------------------------------------------------------------- model internals


@contextmanager
def capture_outputs(model: nn.Module) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Collects, per forward, the visual CUG tokens x_v [B, 25, C] and the fused visual input [B, T, C]."""
    store: dict[str, list[torch.Tensor]] = {"x_v": [], "fused": []}
    hooks = [
        model.visual_cug.register_forward_hook(lambda m, i, o: store["x_v"].append(o[0].detach().float())),
        model.visual_fusion.register_forward_hook(lambda m, i, o: store["fused"].append(o.detach().float())),
    ]
    try:
        yield store
    finally:
        for hook in hooks:
            hook.remove()


def pairwise_stats(vectors: torch.Tensor) -> dict[str, float]:
    """Mean pairwise cosine similarity and Euclidean distance of vectors [S, C] (off-diagonal), and mean norm."""
    s = vectors.shape[0]
    off = ~torch.eye(s, dtype=torch.bool)
    norms = vectors.norm(dim=1)
    cosine = F.normalize(vectors, dim=1) @ F.normalize(vectors, dim=1).T
    distance = torch.cdist(vectors, vectors)
    return {
        "cos": float(cosine[off].mean()) if norms.min() > 0 else float("nan"),
        "dist": float(distance[off].mean()),
        "norm": float(norms.mean()),
    }


def mean_offdiag_cosine(batch: torch.Tensor) -> float:
    """Mean pairwise cosine between the rows of each item of batch [B, S, C], averaged over B."""
    unit = F.normalize(batch, dim=-1)
    gram = unit @ unit.transpose(1, 2)  # [B, S, S]
    s = batch.shape[1]
    return float((gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(1)).mean() / (s * (s - 1)))


@contextmanager
def capture_assignment(grouping: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Recomputes the assignment logits [B, S, L] of a GroupingBlock's Assignment from its inputs (groups, x)."""
    assign = grouping.assign
    store: dict[str, torch.Tensor] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor], output: Any) -> None:
        groups, x = inputs
        queries, keys = module.q_proj(groups), module.k_proj(x)
        store["logits"] = (queries @ keys.transpose(1, 2) * module.scale).detach()
        store["queries"], store["keys"] = queries.detach(), keys.detach()

    handle = assign.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def assignment_stats(store: dict[str, torch.Tensor]) -> dict[str, float]:
    """Entropy over the S groups per segment / ln S (1 = uniform), logit spread, query and key similarity."""
    logits = store["logits"]  # [B, S, L]
    probs = logits.softmax(dim=1)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)  # [B, L]
    keys = store["keys"].reshape(-1, store["keys"].shape[-1])  # all segments of the batch
    return {
        "entropy": float(entropy.mean() / math.log(logits.shape[1])),
        "max_prob": float(probs.max(dim=1).values.mean()),
        "logit_std": float(logits.std(dim=1).mean()),  # spread over groups, per segment
        "query_cos": mean_offdiag_cosine(store["queries"]),  # the 25 group queries of one video
        "key_cos": mean_offdiag_cosine(keys.unsqueeze(0)),  # all segments of the batch
    }


@torch.no_grad()
def probe_batch(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """Class tokens and assignment statistics on a fixed batch, in eval mode."""
    model.eval()
    with (
        capture_assignment(model.visual_cug.class_grouping) as visual,
        capture_assignment(model.audio_cug.class_grouping) as audio,
    ):
        model(*batch)
    model.train()
    return {
        "visual_tokens": pairwise_stats(model.visual_class_tokens.detach()),
        "audio_tokens": pairwise_stats(model.audio_class_tokens.detach()),
        "visual_assign": assignment_stats(visual),
        "audio_assign": assignment_stats(audio),
    }


def grad_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of the current gradients of each top-level branch."""
    squares = dict.fromkeys(BRANCHES, 0.0)
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            squares[name.split(".")[0]] += float(parameter.grad.pow(2).sum())
    return {name: math.sqrt(value) for name, value in squares.items()}


# ---------------------------------------------------------------- evaluation


def run_eval(model: nn.Module, features: Features, batch_size: int = 150) -> dict[str, np.ndarray]:
    """`avvp.inference.predict` in eval mode, plus the captured x_v and the fused visual input."""
    with capture_outputs(model) as captured:
        arrays = predict(model, features, batch_size=batch_size)
    model.train()
    arrays["x_v"] = torch.cat(captured["x_v"]).numpy()
    arrays["fused"] = torch.cat(captured["fused"]).numpy()
    return arrays


def epoch_eval(model: nn.Module, eval_set: Features, eval_truth: dict[str, np.ndarray], n_val: int) -> dict[str, Any]:
    """Val segment scores (first n_val rows) and the probes on val+test; fused-input variance shares."""
    out = run_eval(model, eval_set)
    pred_audio, pred_visual = parse_predictions(out["audio"][:n_val], out["visual"][:n_val], out["video"][:n_val])
    scores = evaluate(pred_audio, pred_visual, eval_truth["audio"][:n_val], eval_truth["visual"][:n_val])
    visible = eval_truth["visual"].any(axis=1)  # [N, 25]
    p_v = out["visual_video"]
    return {
        "val_segment": scores.segment,
        "val_event": scores.event,
        "probe_auc_xv": probe_auc(out["x_v"], visible),
        "probe_auc_fused": probe_auc(out["fused"].mean(axis=1), visible),
        "auc_pv": mean_auc(p_v[1::2], visible[1::2]),  # p_v itself on the probes' held-out rows
        "pv_std_over_videos": float(p_v.std(axis=0).mean()),
        "pv_mean": float(p_v.mean()),
        "fused_shares": variance_shares(out["fused"], eval_truth["visual"]),
    }


# ---------------------------------------------------------------- main


def concat_features(*parts: Features) -> Features:
    return Features(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("audio", "res152", "r2plus1d")))


def summary_line(epoch: int, rec: dict[str, Any]) -> str:
    probe, ev, grads, loss = rec["probe"], rec["eval"], rec["grads"], rec["loss"]
    return (
        f"ep {epoch:2d} lr {rec['lr']:.0e} | loss v {loss['visual']:.4f} a {loss['audio']:.4f} av {loss['video']:.4f}"
        f" | vtok cos {probe['visual_tokens']['cos']:.3f} dist {probe['visual_tokens']['dist']:.3f}"
        f" | H_v {probe['visual_assign']['entropy']:.4f} H_a {probe['audio_assign']['entropy']:.4f}"
        f" | g vcug {grads['visual_cug']:.2e} acug {grads['audio_cug']:.2e} vhead {grads['visual_head']:.2e}"
        f" | AUC xv {ev['probe_auc_xv']:.3f} fused {ev['probe_auc_fused']:.3f} pv {ev['auc_pv']:.3f}"
        f" | val Type {ev['val_segment']['type']:.2f} V {ev['val_segment']['visual']:.2f}"
        f" A {ev['val_segment']['audio']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="LLP-layout folder with AVVP_*.csv and feats/")
    parser.add_argument("--out", type=Path, required=True, help="folder for diagnosis.json")
    parser.add_argument("--train-videos", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr-step", type=int, default=3)
    parser.add_argument("--every", type=int, default=25, help="record the step series every this many steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    feats = args.data / "feats"
    train_data = load_split_data(feats, args.data, "train", limit=args.train_videos)
    val_data, test_data = load_split_data(feats, args.data, "val"), load_split_data(feats, args.data, "test")
    eval_set = concat_features(val_data.features, test_data.features)
    eval_truth = {m: np.concatenate([getattr(d.split, m) for d in (val_data, test_data)]) for m in ("audio", "visual")}
    n_val = len(val_data.split.filenames)
    print(f"loaded {len(train_data.split.filenames)} train, {len(eval_set)} val+test videos")

    shares = feature_decomposition(eval_set, eval_truth["audio"], eval_truth["visual"])
    for space, value in shares.items():
        print(f"variance {space:12s} " + " ".join(f"{k} {v:5.1f}%" for k, v in value.items()))

    config = TrainConfig(seed=args.seed, lr_step=args.lr_step, precision="fp32", max_train_videos=args.train_videos)
    torch.manual_seed(config.seed)
    model = create_model("mgn")
    optimizer = make_optimizer(model, config.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    shuffle = torch.Generator().manual_seed(config.seed)
    stepper = train_step(model, optimizer, train_data, config)
    fixed = tuple(torch.as_tensor(a[:64], dtype=torch.float32) for a in (val_data.features.audio,) + _visual(val_data))

    raw_visual = np.concatenate([eval_set.res152, eval_set.r2plus1d], axis=-1).mean(axis=1)  # [N, 2560]
    visible = eval_truth["visual"].any(axis=1)
    init = epoch_eval(model, eval_set, eval_truth, n_val)
    result: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "variance_shares": shares,
        "probe_l2": PROBE_L2,
        "probe_auc_raw_visual": probe_auc(raw_visual, visible),
        "init": {"probe": probe_batch(model, fixed), "eval": init},
        "steps": [],
        "epochs": [],
    }
    print(f"raw visual input probe AUC {result['probe_auc_raw_visual']:.3f}")
    print(f"init: fused probe AUC {init['probe_auc_fused']:.3f}, x_v probe AUC {init['probe_auc_xv']:.3f}")
    print(f"fused shares at init: {_fmt_shares(init['fused_shares'])}")

    count, step = len(train_data.split.filenames), 0
    model.train()
    for epoch in range(1, args.epochs + 1):
        epoch_start, totals = time.perf_counter(), dict.fromkeys(stepper.keys, 0.0)
        for batch in torch.randperm(count, generator=shuffle).split(config.batch_size):
            stepper.run(batch, len(batch))
            losses = {k: v / len(batch) for k, v in stepper.take_sums().items()}
            for key, value in losses.items():
                totals[key] += value * len(batch)
            step += 1
            if step % args.every == 0:
                record = {"step": step, "epoch": epoch, "loss": losses, "grads": grad_norms(model)}
                record.update(probe_batch(model, fixed))
                result["steps"].append(record)
        grads = grad_norms(model)  # of the epoch's last step
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        rec = {
            "epoch": epoch,
            "step": step,
            "lr": lr,
            "loss": {k: v / count for k, v in totals.items()},
            "grads": grads,
            "probe": probe_batch(model, fixed),
            "train_seconds": time.perf_counter() - epoch_start,
        }
        rec["eval"] = epoch_eval(model, eval_set, eval_truth, n_val)
        result["epochs"].append(rec)
        print(summary_line(epoch, rec), flush=True)
        (args.out / "diagnosis.json").write_text(json.dumps(result, indent=1))

    print(f"fused shares at end: {_fmt_shares(result['epochs'][-1]['eval']['fused_shares'])}")
    result["seconds"] = time.perf_counter() - started
    (args.out / "diagnosis.json").write_text(json.dumps(result, indent=1))
    print(f"done in {result['seconds']:.0f} s -> {args.out / 'diagnosis.json'}")


def _visual(data: SplitData) -> tuple[np.ndarray, np.ndarray]:
    return data.features.res152, data.features.r2plus1d


def _fmt_shares(shares: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.1f}%" for k, v in shares.items())


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, data: SplitData, config: TrainConfig) -> TrainStep:
    """The project's eager training step over the in-memory training tensors (CPU, fp32, one process)."""
    tensors = tuple(
        torch.as_tensor(np.asarray(a), dtype=torch.float32)
        for a in (data.features.audio, data.features.res152, data.features.r2plus1d)
    )
    labels = torch.as_tensor(data.split.labels, dtype=torch.float32)
    return TrainStep(model, optimizer, tensors, labels, config, torch.device("cpu"), "fp32", DistributedContext())


if __name__ == "__main__":
    main()
