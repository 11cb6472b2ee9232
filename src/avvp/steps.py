"""One optimisation step of the authors' recipe: Adam and the step itself, eager, stacked over runs or
captured in a CUDA graph; the loss is `avvp.objective.Objective`. `avvp train` takes every step through
`TrainStep`; the tests take the authors' steps through it too."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from avvp.data.classes import NUM_CLASSES
from avvp.distributed import DistributedContext
from avvp.models.registry import forward_kwargs, spec_of
from avvp.objective import Objective
from avvp.precision import autocast

if TYPE_CHECKING:
    from avvp.denoise import Denoiser
    from avvp.recipe import TrainConfig

log = logging.getLogger(__name__)


def make_optimizer(model: nn.Module, lr: float, *, capturable: bool = False) -> torch.optim.Optimizer:
    """Adam as in the recipe, with the fused kernel where this torch has it (the same update, one kernel per step
    instead of several per parameter: on CPU this halves MGN's step time)."""
    options = {"capturable": True} if capturable else {}
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True, **options)
    except (RuntimeError, TypeError):  # older torch without fused Adam on this device
        return torch.optim.Adam(model.parameters(), lr=lr, **options)


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
        self.objective = Objective(spec_of(model).name, config, dist_ctx.world_size)
        self.keys = self.objective.keys
        self.forward_kwargs = forward_kwargs(model)  # the cross-modal-free form where the run trains that
        self.sums = torch.zeros(len(self.keys), dtype=torch.float64, device=device)
        self.denoiser: Denoiser | None = None  # JoMoLD (`--noise-ratios`): set by the training loop

    def run(self, index: torch.Tensor, global_size: int, *, cache_autocast: bool = True) -> None:
        """One step on the videos at `index` of the in-memory tensors."""
        audio, res152, r2plus1d = (t.index_select(0, index).to(self.device, non_blocking=True) for t in self.tensors)
        labels = self.labels.index_select(0, index).to(self.device, non_blocking=True)
        if self.denoiser is not None:  # the labels JoMoLD keeps, as (weak, audio, visual) rows
            labels = self.denoiser(self.model, (audio, res152, r2plus1d), labels, index.to(self.device))
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
            output = self.model(audio, res152, r2plus1d, **self.forward_kwargs)
        loss, totals = self.objective(output, labels, global_size)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.sums += totals.detach().double()

    def __call__(self, index: torch.Tensor, global_size: int) -> None:
        self.run(index, global_size)

    def take_sums(self) -> dict[str, float]:
        """The epoch's per-video loss sums (one host synchronisation), then reset."""
        values = self.sums.tolist()
        self.sums.zero_()
        return dict(zip(self.keys, values))


class StackedTrainStep:
    """One optimisation step of several runs of one model configuration at once, on one device.

    Every step, the runs' weights are stacked along a new leading axis and the model is applied to each run's own
    batch with `torch.func.vmap`: one call per layer for all runs instead of one per run. The gradients flow back
    through the stacking into each run's own weights, and each run's own Adam steps them, so the maths is that of
    each run trained alone. What differs is the noise of drop-path, dropout and Gumbel sampling: the runs draw it
    from one shared stream (vmap's `randomness="different"`), not each from its own. `steps` are the runs' own
    `TrainStep`s (their model, optimiser, loss sums, labels, JoMoLD denoiser), sharing one set of training features;
    a run's denoiser ranks its own batch with its own model before the stacked call (eval mode: no noise drawn).
    """

    def __init__(self, steps: list[TrainStep]) -> None:
        self.steps = steps
        first = steps[0]
        self.template = first.model  # the module whose forward is applied with each run's weights
        self.names = [name for name, _ in first.model.named_parameters()]
        self.weights = [[p for _, p in step.model.named_parameters()] for step in steps]
        self.losses = torch.func.vmap(self._run_objective, in_dims=(0, 0, 0, 0, 0, None), randomness="different")

    def _run_objective(self, weights, audio, res152, r2plus1d, labels, global_size):
        first = self.steps[0]
        with autocast(first.device, first.precision):
            output = torch.func.functional_call(self.template, weights, (audio, res152, r2plus1d), first.forward_kwargs)
        return first.objective(output, labels, global_size)

    def __call__(self, indices: list[torch.Tensor], global_size: int) -> None:
        """One step of every run, run i on the videos at `indices[i]` of the shared training tensors."""
        first = self.steps[0]
        inputs = [
            torch.stack([t.index_select(0, index) for index in indices]).to(first.device, non_blocking=True)
            for t in first.tensors
        ]
        labels = [  # each run's own
            step.labels.index_select(0, index).to(first.device, non_blocking=True)
            for step, index in zip(self.steps, indices)
        ]
        for run, step in enumerate(self.steps):
            if step.denoiser is not None:  # JoMoLD: each run ranks its own batch with its own model, outside vmap
                run_inputs = tuple(t[run] for t in inputs)
                labels[run] = step.denoiser(step.model, run_inputs, labels[run], indices[run].to(first.device))
        inputs.append(torch.stack(_as_rows(labels)))
        weights = {name: torch.stack(tensors) for name, tensors in zip(self.names, zip(*self.weights))}
        with warnings.catch_warnings():  # vmap runs the one-hot of Gumbel sampling (scatter_) per run, and says so
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
            loss, totals = self.losses(weights, *inputs, global_size)  # [S], [S, K]
        for step in self.steps:
            step.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # the runs are independent: each run's gradient is that of its own loss
        for step, run_totals in zip(self.steps, totals.detach().double()):
            step.optimizer.step()
            step.sums += run_totals


def _as_rows(labels: list[torch.Tensor]) -> list[torch.Tensor]:
    """The runs' labels in one shape: where some are (weak, audio, visual) rows [B, 3, 25] (modality labels, JoMoLD),
    weak labels [B, 25] become three equal rows, which the objective reads as it reads the weak labels."""
    if all(run_labels.dim() == labels[0].dim() for run_labels in labels):
        return labels
    return [run_labels if run_labels.dim() == 3 else run_labels.unsqueeze(1).expand(-1, 3, -1) for run_labels in labels]


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
        if eager.config.stream:
            problems.append("the training split is streamed from disk")
        if not eager.config.stream and eager.tensors[0].device.type != "cuda":
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

    @property
    def objective(self) -> Objective:
        return self.eager.objective


def time_train_step(config: TrainConfig, device: torch.device, *, warmup: int = 2, timed: int = 3) -> float:
    """Seconds per training step of `config`'s model at its batch size on `device` (fp32 or the config's precision),
    measured on random inputs of the real shapes with a throwaway model: the planning figure of `avvp demo`. The
    global random state is restored afterwards, so that the runs trained next are unchanged."""
    import time

    from avvp.models import create_model
    from avvp.precision import resolve_precision

    state = torch.get_rng_state()
    try:
        model = create_model(config.model, cross_modal=config.cross_modal, **config.model_overrides).to(device)
        precision = resolve_precision(config.precision, device)
        step = TrainStep(model, make_optimizer(model, config.lr), (), torch.zeros(0), config, device, precision,
                         DistributedContext())  # fmt: skip
        size = config.batch_size
        inputs = [torch.rand(size, *shape, device=device) for shape in ((10, 128), (10, 2048), (10, 512))]
        labels = (torch.rand(size, NUM_CLASSES, device=device) < 0.1).float()
        for index in range(warmup + timed):
            if index == warmup:
                started = time.perf_counter()
            step.step(*inputs, labels, size)
        step.take_sums()  # waits for the device
        return (time.perf_counter() - started) / timed
    finally:
        torch.set_rng_state(state)
