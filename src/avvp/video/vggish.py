"""VGGish in PyTorch: the log-mel front end, the network and the optional PCA post-processing.

The network and its state-dict keys follow the widely used PyTorch port (torchvggish), so its published
weights load unchanged. The front end is the standard VGGish one: 16 kHz mono, 25 ms periodic-Hann
windows, 10 ms hop, 512-point FFT magnitude, 64 HTK mel bands over 125..7500 Hz, log(mel + 0.01).

LLP convention here: one embedding per second. Second ``s`` is the 96-frame (0.96 s) patch whose first
frame starts at ``s`` seconds, so the patch covers [s, s + 0.975) s of audio. (The VGGish reference
tiles patches every 0.96 s instead, which drifts against one-second segments on longer videos.)
"""

from __future__ import annotations

import numpy as np

from avvp.video import SAMPLE_RATE

WINDOW_SAMPLES = 400  # 25 ms at 16 kHz
HOP_SAMPLES = 160  # 10 ms
FFT_SIZE = 512  # next power of two above the window
NUM_MEL_BANDS = 64
MEL_LOW_HZ = 125.0
MEL_HIGH_HZ = 7500.0
LOG_OFFSET = 0.01
PATCH_FRAMES = 96  # 0.96 s of 10-ms frames
FRAMES_PER_SECOND_AUDIO = SAMPLE_RATE // HOP_SAMPLES  # 100 log-mel frames per second
EMBEDDING_DIM = 128
PCA_CLIP = 2.0  # post-processed embeddings are clipped to [-2, 2] then quantised to 8 bits


def hertz_to_mel(hertz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 1127 * ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(hertz, dtype=np.float64) / 700.0)


def mel_matrix(num_spectrogram_bins: int = FFT_SIZE // 2 + 1) -> np.ndarray:
    """Triangular mel weights [num_spectrogram_bins, 64] (HTK bands, 125..7500 Hz, DC bin zeroed)."""
    bin_mels = hertz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, num_spectrogram_bins))  # [F]
    edges = np.linspace(hertz_to_mel(MEL_LOW_HZ), hertz_to_mel(MEL_HIGH_HZ), NUM_MEL_BANDS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]  # [M] each
    rising = (bin_mels[:, None] - lower) / (center - lower)  # [F, M]
    falling = (upper - bin_mels[:, None]) / (upper - center)  # [F, M]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # the DC bin contributes to no band
    return weights


def log_mel(waveform: np.ndarray) -> np.ndarray:
    """Log-mel spectrogram [num_frames, 64] of a 16 kHz mono waveform in [-1, 1].

    Frames are 400 samples every 160, without padding: num_frames = 1 + (len - 400) // 160 (0 if shorter).
    """
    waveform = np.asarray(waveform, dtype=np.float64)
    num_frames = 0 if len(waveform) < WINDOW_SAMPLES else 1 + (len(waveform) - WINDOW_SAMPLES) // HOP_SAMPLES
    if num_frames == 0:
        return np.zeros((0, NUM_MEL_BANDS), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(waveform, WINDOW_SAMPLES)[::HOP_SAMPLES][:num_frames]  # [N, 400]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW_SAMPLES) / WINDOW_SAMPLES)  # periodic Hann
    magnitude = np.abs(np.fft.rfft(frames * window, FFT_SIZE))  # [N, 257]
    return np.log(magnitude @ mel_matrix(magnitude.shape[1]) + LOG_OFFSET).astype(np.float32)  # [N, 64]


def second_patches(waveform: np.ndarray, num_seconds: int) -> np.ndarray:
    """One 96x64 log-mel patch per second: [num_seconds, 96, 64]; audio short of the end is zero-padded."""
    needed = num_seconds * SAMPLE_RATE
    waveform = np.asarray(waveform, dtype=np.float32)[:needed]
    if len(waveform) < needed:
        waveform = np.pad(waveform, (0, needed - len(waveform)))
    mel = log_mel(waveform)  # [100 * num_seconds - 2, 64]: enough for the last patch (frames 100s .. 100s+95)
    starts = np.arange(num_seconds) * FRAMES_PER_SECOND_AUDIO
    return np.stack([mel[start : start + PATCH_FRAMES] for start in starts])


def build_vggish():
    """The VGGish network (random init) with the torchvggish module layout and state-dict keys."""
    import torch
    from torch import nn

    class VGGish(nn.Module):
        """VGGish: log-mel patches [B, 1, 96, 64] -> embeddings [B, 128] (before PCA)."""

        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            in_channels = 1
            for spec in (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool"):
                if spec == "pool":
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                else:
                    layers += [nn.Conv2d(in_channels, spec, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                    in_channels = spec
            self.features = nn.Sequential(*layers)  # conv keys features.{0,3,6,8,11,13}
            self.embeddings = nn.Sequential(  # keys embeddings.{0,2,4}
                nn.Linear(512 * 4 * 6, 4096),
                nn.ReLU(inplace=True),
                nn.Linear(4096, 4096),
                nn.ReLU(inplace=True),
                nn.Linear(4096, EMBEDDING_DIM),
                nn.ReLU(inplace=True),
            )

        def forward(self, patches: torch.Tensor) -> torch.Tensor:
            feature_maps = self.features(patches)  # [B, 512, 6, 4]
            # The port flattens channels-last (as the original TensorFlow model): [B, 6, 4, 512] -> [B, 12288].
            flat = feature_maps.permute(0, 2, 3, 1).reshape(feature_maps.shape[0], -1)
            return self.embeddings(flat)  # [B, 128]

    return VGGish()


def pca_postprocess(embeddings, pca_eigen_vectors, pca_means):
    """The port's post-processing: PCA, clip to [-2, 2], quantise to 0..255 (returned as float).

    Args:
        embeddings: [B, 128] raw VGGish embeddings (torch tensor).
        pca_eigen_vectors: [128, 128], rows are the components.
        pca_means: [128, 1].
    """
    import torch

    projected = (pca_eigen_vectors @ (embeddings.T - pca_means)).T  # [B, 128]
    clipped = projected.clamp(-PCA_CLIP, PCA_CLIP)
    return torch.round((clipped + PCA_CLIP) * (255.0 / (2 * PCA_CLIP)))
