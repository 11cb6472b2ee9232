"""A third model defined outside avvp, as a researcher's plugin would be: found through AVVP_PLUGINS=avvp_toy_plugin
(with this folder on the Python path), registered with the public `avvp.register_model`, and nothing inside avvp
changed. A few linear layers and attentive multiple-instance pooling over the segments and the two modalities; one
config field (`hidden`), set from the command line with `--model-arg hidden=N`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import avvp


@dataclass(frozen=True)
class ToyConfig:
    hidden: int = 64  # width of the per-segment projections


@avvp.register_model("toy", config=ToyConfig)
class ToyMIL(nn.Module):
    """Linear segment classifiers with attentive MIL pooling (a test plugin)."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.audio = nn.Linear(128, config.hidden)
        self.visual = nn.Linear(2048 + 512, config.hidden)
        self.classify = nn.Linear(config.hidden, 25)  # per segment and modality: class probabilities
        self.attend_time = nn.Linear(config.hidden, 25)  # attention over the segments, per class
        self.attend_modality = nn.Linear(config.hidden, 25)  # attention over the two modalities, per class

    def forward(self, audio: torch.Tensor, res152: torch.Tensor, r2plus1d: torch.Tensor) -> avvp.ParseOutput:
        frames = res152.reshape(len(res152), 10, -1, 2048).mean(dim=2)  # 80 frames or 10 seconds -> [B, 10, 2048]
        audio_hidden = torch.relu(self.audio(audio))  # [B, 10, H]
        visual_hidden = torch.relu(self.visual(torch.cat([frames, r2plus1d], dim=-1)))  # [B, 10, H]
        hidden = torch.stack([audio_hidden, visual_hidden], dim=2)  # [B, 10, 2, H]
        segment_probs = torch.sigmoid(self.classify(hidden))  # [B, 10, 2, 25]
        pooled = self.attend_time(hidden).softmax(dim=1) * segment_probs  # [B, 10, 2, 25]
        modality_weights = self.attend_modality(hidden).softmax(dim=2)  # [B, 10, 2, 25]
        return avvp.ParseOutput(
            p_av=(pooled * modality_weights).sum(dim=(1, 2)).clamp(max=1.0),
            p_a=pooled[:, :, 0].sum(dim=1),
            p_v=pooled[:, :, 1].sum(dim=1),
            audio=segment_probs[:, :, 0],
            visual=segment_probs[:, :, 1],
        )
