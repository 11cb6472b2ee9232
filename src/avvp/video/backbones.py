"""The three feature networks and the LLP features of one decoded video.

- audio: VGGish, one 128-d embedding per second (see ``avvp.video.vggish`` for the patch convention).
- res152: torchvision ResNet-152 without its fc, global-average-pooled 2048-d, on every 8-fps frame at
  224x224 with ImageNet normalisation.
- r2plus1d: torchvision R(2+1)D-18 without its fc, 512-d, on one snippet of 8 frames (one second) at
  112x112 with Kinetics normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from avvp.errors import AvvpError
from avvp.video import FRAMES_PER_SECOND
from avvp.video.weights import WeightSource, load_state_dict

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
FRAME_BATCH = 16  # ResNet-152 frames per forward pass
SNIPPET_BATCH = 4  # R(2+1)D-18 snippets per forward pass
PATCH_BATCH = 32  # VGGish patches per forward pass


@dataclass
class VideoFeatures:
    """LLP features of one video of L seconds (float32)."""

    audio: np.ndarray  # [L, 128]
    res152: np.ndarray  # [8L, 2048]
    r2plus1d: np.ndarray  # [L, 512]


class FeatureExtractor:
    """Holds VGGish, ResNet-152 and R(2+1)D-18 on a device and turns decoded videos into features."""

    def __init__(self, source: WeightSource, device=None, seed: int = 0) -> None:
        import torch
        import torchvision

        self.device = torch.device(device or "cpu")
        self.source = source
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # random-weight features are reproducible
            from avvp.video.vggish import build_vggish

            self.vggish = build_vggish()
            self.resnet = torchvision.models.resnet152(weights=None)
            self.r2plus1d = torchvision.models.video.r2plus1d_18(weights=None)
            pca = _random_pca() if source.random else None
        if not source.random:
            _load(self.vggish, source, "vggish")
            _load(self.resnet, source, "resnet152")
            _load(self.r2plus1d, source, "r2plus1d_18")
            if source.vggish_pca:
                pca = _pca_params(load_state_dict(source, "vggish_pca"), source)
        self.resnet.fc = torch.nn.Identity()  # -> pooled 2048-d
        self.r2plus1d.fc = torch.nn.Identity()  # -> pooled 512-d
        self.pca = tuple(t.to(self.device) for t in pca) if (pca is not None and source.vggish_pca) else None
        for net in (self.vggish, self.resnet, self.r2plus1d):
            net.eval().to(self.device)
        # channels-last layouts: about 25% faster convolutions on CPU (oneDNN), same results to float precision
        self.resnet.to(memory_format=torch.channels_last)
        self.r2plus1d.to(memory_format=torch.channels_last_3d)
        self._imagenet = _normaliser(IMAGENET_MEAN, IMAGENET_STD, self.device)
        self._kinetics = _normaliser(KINETICS_MEAN, KINETICS_STD, self.device)

    def __call__(self, video) -> VideoFeatures:
        """Features of a ``DecodedVideo``."""
        import torch

        from avvp.video.vggish import pca_postprocess, second_patches

        with torch.inference_mode():
            patches = torch.from_numpy(second_patches(video.waveform, video.num_seconds))[:, None]  # [L, 1, 96, 64]
            audio = torch.cat([self.vggish(chunk.to(self.device)) for chunk in patches.split(PATCH_BATCH)])
            if self.pca is not None:
                audio = pca_postprocess(audio, *self.pca)  # [L, 128]
            res152 = torch.cat(
                [self.resnet(self._frames(chunk, self._imagenet)) for chunk in _chunks(video.frames_224, FRAME_BATCH)]
            )  # [8L, 2048]
            snippets = video.frames_112.reshape(video.num_seconds, FRAMES_PER_SECOND, *video.frames_112.shape[1:])
            r2plus1d = torch.cat(
                [self.r2plus1d(self._snippets(chunk)) for chunk in _chunks(snippets, SNIPPET_BATCH)]
            )  # [L, 512]
        return VideoFeatures(*(t.float().cpu().numpy() for t in (audio, res152, r2plus1d)))

    def _frames(self, frames: np.ndarray, normaliser) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> normalised float [N, 3, H, W] on the device."""
        import torch

        pixels = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float().div_(255)  # channels-last view
        mean, std = normaliser
        return ((pixels - mean) / std).contiguous(memory_format=torch.channels_last)

    def _snippets(self, snippets: np.ndarray) -> torch.Tensor:
        """uint8 [S, 8, H, W, 3] -> normalised float [S, 3, 8, H, W] on the device."""
        import torch

        num_snippets = snippets.shape[0]
        pixels = self._frames(snippets.reshape(-1, *snippets.shape[2:]), self._kinetics)  # [S*8, 3, H, W]
        clips = pixels.reshape(num_snippets, FRAMES_PER_SECOND, *pixels.shape[1:]).transpose(1, 2)
        return clips.contiguous(memory_format=torch.channels_last_3d)


def _chunks(array: np.ndarray, size: int):
    return (array[start : start + size] for start in range(0, len(array), size))


def _normaliser(mean: tuple[float, ...], std: tuple[float, ...], device):
    import torch

    return torch.tensor(mean, device=device)[:, None, None], torch.tensor(std, device=device)[:, None, None]


def _load(net, source: WeightSource, name: str) -> None:
    """Load a state dict strictly, with a one-line error naming the file if its keys or shapes differ."""
    from avvp.video.weights import find_weight_file

    state = load_state_dict(source, name)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).split("\n")[0:3]
        raise AvvpError(
            f"{find_weight_file(source.folder, name)}: not a {name} state dict ({' '.join(' '.join(first).split())})"
        ) from err


def _pca_params(state: dict, source: WeightSource):
    """The port's PCA parameters: eigen vectors [128, 128] and means [128, 1]."""
    import torch

    from avvp.video.weights import find_weight_file

    path = find_weight_file(source.folder, "vggish_pca")
    try:
        vectors = torch.as_tensor(state["pca_eigen_vectors"], dtype=torch.float32)
        means = torch.as_tensor(state["pca_means"], dtype=torch.float32).reshape(-1, 1)
    except KeyError as err:
        raise AvvpError(f"{path}: lacks {err.args[0]!r} (expected pca_eigen_vectors and pca_means)") from err
    if vectors.shape != (128, 128) or means.shape != (128, 1):
        raise AvvpError(
            f"{path}: pca_eigen_vectors {tuple(vectors.shape)} / pca_means {tuple(means.shape)}, "
            "expected (128, 128) / (128, 1)"
        )
    return vectors, means


def _random_pca():
    """A random orthonormal PCA with zero means (random-weight mode)."""
    import torch

    vectors, _ = torch.linalg.qr(torch.randn(128, 128))
    return vectors, torch.zeros(128, 1)
