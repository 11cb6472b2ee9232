"""VGGish front end and network layout, checked against direct computations written here."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from avvp.video import vggish


def _direct_log_mel(waveform: np.ndarray) -> np.ndarray:
    """The VGGish log-mel, written out step by step with loops (the reference for the vectorised one)."""
    sample_rate, window_length, hop, fft_length = 16000, 400, 160, 512
    window = np.hanning(window_length + 1)[:-1]  # periodic Hann
    num_bins = fft_length // 2 + 1

    def mel(hz):
        return 1127.0 * math.log(1.0 + hz / 700.0)

    low, high = mel(125.0), mel(7500.0)
    edges = [low + (high - low) * k / 65 for k in range(66)]
    weights = np.zeros((num_bins, 64))
    for b in range(1, num_bins):  # bin 0 (DC) stays zero
        m = mel(b * (sample_rate / 2) / (num_bins - 1))
        for band in range(64):
            left, centre, right = edges[band], edges[band + 1], edges[band + 2]
            if left < m <= centre:
                weights[b, band] = (m - left) / (centre - left)
            elif centre < m < right:
                weights[b, band] = (right - m) / (right - centre)
    rows = []
    start = 0
    while start + window_length <= len(waveform):
        spectrum = np.fft.fft(waveform[start : start + window_length] * window, fft_length)[:num_bins]
        rows.append(np.log(np.abs(spectrum) @ weights + 0.01))
        start += hop
    return np.array(rows)


def test_log_mel_matches_direct_numpy():
    rng = np.random.default_rng(0)
    t = np.arange(16000 + 1234) / 16000
    waveform = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(len(t))
    fast = vggish.log_mel(waveform)
    direct = _direct_log_mel(waveform)
    assert fast.shape == direct.shape == (1 + (len(t) - 400) // 160, 64)
    np.testing.assert_allclose(fast, direct, rtol=1e-5, atol=1e-5)


def test_log_mel_of_silence_is_log_offset_and_short_audio_has_no_frames():
    np.testing.assert_allclose(vggish.log_mel(np.zeros(2000)), math.log(0.01), rtol=1e-6)
    assert vggish.log_mel(np.zeros(399)).shape == (0, 64)


def test_tone_peaks_in_the_band_holding_its_frequency():
    t = np.arange(16000) / 16000
    mel = vggish.log_mel(np.sin(2 * np.pi * 1000 * t)).mean(axis=0)
    edges = np.linspace(vggish.hertz_to_mel(125), vggish.hertz_to_mel(7500), 66)
    expected_band = int(np.argmin(np.abs(edges[1:-1] - vggish.hertz_to_mel(1000))))
    assert abs(int(np.argmax(mel)) - expected_band) <= 1


def test_one_patch_per_second_starting_at_the_second():
    rng = np.random.default_rng(1)
    waveform = rng.uniform(-1, 1, 3 * 16000).astype(np.float32)
    patches = vggish.second_patches(waveform, 3)
    assert patches.shape == (3, 96, 64)
    mel = vggish.log_mel(waveform)
    for second in range(3):
        np.testing.assert_array_equal(patches[second], mel[100 * second : 100 * second + 96])
    # A patch sees only [s, s + 0.975) s: changing the audio after that leaves patch 0 unchanged.
    changed = waveform.copy()
    changed[15600:] = 0
    np.testing.assert_array_equal(vggish.second_patches(changed, 3)[0], patches[0])
    # Missing audio at the end is zero-padded rather than shortening the output.
    assert vggish.second_patches(waveform[:20000], 3).shape == (3, 96, 64)


def test_vggish_state_dict_has_the_port_keys_and_shapes():
    shapes = {key: tuple(value.shape) for key, value in vggish.build_vggish().state_dict().items()}
    expected_convs = {0: (64, 1), 3: (128, 64), 6: (256, 128), 8: (256, 256), 11: (512, 256), 13: (512, 512)}
    expected = {}
    for index, (out_channels, in_channels) in expected_convs.items():
        expected[f"features.{index}.weight"] = (out_channels, in_channels, 3, 3)
        expected[f"features.{index}.bias"] = (out_channels,)
    for index, (out_features, in_features) in {0: (4096, 12288), 2: (4096, 4096), 4: (128, 4096)}.items():
        expected[f"embeddings.{index}.weight"] = (out_features, in_features)
        expected[f"embeddings.{index}.bias"] = (out_features,)
    assert shapes == expected


def test_vggish_flattens_channels_last_like_the_port():
    torch.manual_seed(0)
    net = vggish.build_vggish().eval()
    patches = torch.randn(2, 1, 96, 64)
    with torch.no_grad():
        feature_maps = net.features(patches)  # [2, 512, 6, 4]
        # Make the first embedding unit read exactly one position: (row 1, column 2, channel 5).
        net.embeddings[0].weight.zero_()
        net.embeddings[0].bias.zero_()
        net.embeddings[0].weight[0, (1 * 4 + 2) * 512 + 5] = 1.0
        first_hidden = torch.relu(net.embeddings[0](net.features(patches).permute(0, 2, 3, 1).flatten(1)))
        captured = {}
        net.embeddings[1].register_forward_hook(lambda module, inputs, output: captured.update(out=output.clone()))
        net(patches)
    assert feature_maps.shape == (2, 512, 6, 4)
    torch.testing.assert_close(captured["out"][:, 0], torch.relu(feature_maps[:, 5, 1, 2]))
    torch.testing.assert_close(captured["out"], first_hidden)


def test_pca_postprocess_matches_numpy():
    rng = np.random.default_rng(2)
    embeddings = rng.uniform(0, 3, (4, 128)).astype(np.float32)
    vectors = np.linalg.qr(rng.standard_normal((128, 128)))[0].astype(np.float32)
    means = rng.standard_normal((128, 1)).astype(np.float32)
    out = vggish.pca_postprocess(torch.from_numpy(embeddings), torch.from_numpy(vectors), torch.from_numpy(means))
    projected = np.clip((vectors @ (embeddings.T - means)).T, -2, 2)
    expected = np.round((projected + 2) * 255 / 4)
    np.testing.assert_allclose(out.numpy(), expected, atol=1.0)  # rounding at .5 may differ by float error
    assert np.mean(out.numpy() == expected) > 0.99
    assert out.min() >= 0 and out.max() <= 255


def test_import_avvp_and_the_cli_parser_stay_light():
    import subprocess
    import sys

    code = (
        "import sys, avvp, avvp.parse, avvp.cli; avvp.cli.build_parser();"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('av', 'torchvision', 'torch', 'matplotlib')"
        " or m == 'avvp.video.vggish'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
