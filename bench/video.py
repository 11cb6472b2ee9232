"""Time the raw-video path on one video: decoding, the three feature networks and `parse_video` end to end.

    .venv/bin/python bench/video.py                        # the real LLP video ../shared/llp/BjCEufrlXm4.mp4, CPU
    .venv/bin/python bench/video.py clip.mp4 --device cuda --repeats 5

The feature networks (VGGish, ResNet-152, R(2+1)D-18) and the model (MGN (3,3,6) by default) have random weights:
the same architectures, so the same FLOPs and the same time as the real weights, with no weight files needed. Each
stage runs once as a warm-up (reported as "first call" for the networks) and then --repeats times; the table gives
the median, min and max. The time inside each network is taken with forward hooks (with a CUDA synchronise on a
GPU); the GFLOP column is torch's FLOP counter on one input, times the inputs per video. `parse_video` includes
loading the checkpoint, decoding, building the networks (random initialisation here, where real runs load weight
files instead), the networks and the model over the video's windows. Prints the device, the CPU, the library
versions and the load average before and after, since a shared machine slows every row. Needs the video extra
(`pip install -e ".[video]"`); without the video it says so and exits 0.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = REPO.parent / "shared" / "llp" / "BjCEufrlXm4.mp4"


def cpu_description() -> str:
    """Model name, widest vector ISA and core count of this machine's CPU (from /proc/cpuinfo on Linux)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else ("AVX2 only" if "avx2" in flags else "no AVX2")
    extras = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    return f"{name} ({', '.join([isa, *extras])}), {os.cpu_count()} cores"


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


class NetworkClock:
    """Wall seconds spent inside each named network's forward passes, taken with forward hooks."""

    def __init__(self, networks: dict, synchronize) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._synchronize = synchronize
        self._starts: dict[str, float] = {}
        for name, network in networks.items():
            network.register_forward_pre_hook(lambda module, args, name=name: self._start(name))
            network.register_forward_hook(lambda module, args, output, name=name: self._stop(name))

    def _start(self, name: str) -> None:
        self._synchronize()
        self._starts[name] = time.perf_counter()

    def _stop(self, name: str) -> None:
        self._synchronize()
        self.seconds[name] += time.perf_counter() - self._starts[name]

    def reset(self) -> None:
        self.seconds.clear()


def forward_flops(network, shape: tuple[int, ...], device) -> int:
    """FLOPs of one forward pass of ``network`` on one random input of ``shape`` (torch's counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        network(torch.randn(shape, device=device))
    return counter.get_total_flops()


def timed(function, synchronize) -> float:
    start = time.perf_counter()
    function()
    synchronize()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", nargs="?", type=Path, default=DEFAULT_VIDEO, help="default: %(default)s")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per stage after one warm-up (default: 3)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--model", default="mgn", help="model of the random checkpoint parse_video runs (default: mgn)")
    parser.add_argument("--no-parse", action="store_true", help="skip the end-to-end parse_video rows")
    args = parser.parse_args()
    if not args.video.is_file():
        print(f"bench/video.py: skipped: {args.video} is absent (pass a video file)", file=sys.stderr)
        return 0
    try:
        import av
        import torch
        import torchvision
    except ImportError as err:
        print(
            f"bench/video.py: skipped: {err.name} is missing; install the video extra: pip install -e '.[video]'",
            file=sys.stderr,
        )
        return 0

    from avvp.checkpoint import save_checkpoint
    from avvp.models import create_model
    from avvp.parse import predict_windows
    from avvp.video.backbones import FeatureExtractor
    from avvp.video.decode import decode_video
    from avvp.video.parse import parse_video
    from avvp.video.weights import WeightSource

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    random_weights = WeightSource(folder=None, random=True)
    load_before = load_average()
    rows: list[tuple[str, list[float]]] = []

    def stage(label: str, function) -> None:
        function()  # warm-up
        rows.append((label, [timed(function, synchronize) for _ in range(args.repeats)]))

    stage("decode (PyAV: 8-fps frames, 16-kHz audio)", lambda: decode_video(args.video))
    decoded = decode_video(args.video)
    seconds = decoded.num_seconds
    start = time.perf_counter()
    extractor = FeatureExtractor(random_weights, device=device)
    synchronize()
    rows.append(("build the three networks (random init)", [time.perf_counter() - start]))
    networks = {  # label -> (network, inputs per video, the shape of one input)
        f"  VGGish ({seconds} patches of 96x64)": (extractor.vggish, seconds, (1, 1, 96, 64)),
        f"  ResNet-152 ({8 * seconds} frames, 224x224)": (extractor.resnet, 8 * seconds, (1, 3, 224, 224)),
        f"  R(2+1)D-18 ({seconds} snippets, 8x112x112)": (extractor.r2plus1d, seconds, (1, 3, 8, 112, 112)),
    }
    clock = NetworkClock({name: network for name, (network, _, _) in networks.items()}, synchronize)
    rows.append(("networks, first call", [timed(lambda: extractor(decoded), synchronize)]))
    totals, inside = [], defaultdict(list)
    for _ in range(args.repeats):
        clock.reset()
        totals.append(timed(lambda: extractor(decoded), synchronize))
        for name in networks:
            inside[name].append(clock.seconds[name])
    flops = {name: count * forward_flops(network, shape, device) for name, (network, count, shape) in networks.items()}
    flops["networks (features of the video)"] = sum(flops.values())
    rows.append(("networks (features of the video)", totals))
    rows += [(name, inside[name]) for name in networks]
    other = [total - sum(inside[name][i] for name in networks) for i, total in enumerate(totals)]
    rows.append(("  other (copies, normalisation)", other))
    features = extractor(decoded)

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = create_model(args.model)
        checkpoint = Path(tmp) / f"random_{args.model}.safetensors"
        save_checkpoint(checkpoint, model)
        model = model.to(device).eval()
        windows = predict_windows(model, features.audio, features.res152, features.r2plus1d, device=device)[0]
        stage(
            f"{args.model.upper()} over {len(windows)} window(s)",
            lambda: predict_windows(model, features.audio, features.res152, features.r2plus1d, device=device),
        )
        if not args.no_parse:
            stage(
                "parse_video, end to end",
                lambda: parse_video(args.video, checkpoint, weights=random_weights, device=device),
            )

    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    audio = "with audio" if decoded.has_audio else "no audio track"
    decoded_mb = (decoded.frames_224.nbytes + decoded.frames_112.nbytes + decoded.waveform.nbytes) / 1e6
    now = datetime.datetime.now().astimezone()
    print(f"video: {args.video} ({decoded.duration:.2f} s decoded, {seconds} seconds, {audio}; {decoded_mb:.1f} MB)")
    print(
        f"device: {device}{gpu}; CPU: {cpu_description()}; torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads), torchvision {torchvision.__version__}, PyAV {av.__version__}"
    )
    print(f"random weights (the real architectures: the same FLOPs); {now:%Y-%m-%d %H:%M %Z}")
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_average()}\n")
    print(f"{'stage':<46} {'median s':>9} {'min s':>7} {'max s':>7} {'calls':>5} {'GFLOP':>7} {'GFLOP/s':>8}")
    for label, times in rows:
        median = statistics.median(times)
        rate = f"{flops[label] / 1e9:>7.0f} {flops[label] / 1e9 / median:>8.0f}" if label in flops else ""
        print(f"{label:<46} {median:>9.3f} {min(times):>7.3f} {max(times):>7.3f} {len(times):>5} {rate}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
