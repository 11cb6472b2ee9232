"""Checkpoints: our save/load round trip, import/export of the authors' format, and the errors for bad files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from avvp.checkpoint import export_official, load_model, official_state_dict, save_checkpoint
from avvp.cli import main
from avvp.data.classes import CLASSES
from avvp.errors import AvvpError
from avvp.models import count_parameters, create_model

OUTPUTS = ("p_av", "p_a", "p_v", "audio", "visual")


pytestmark = pytest.mark.usefixtures("one_thread")


def make_inputs(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 10, 128, generator=generator),
        torch.rand(batch, 80, 2048, generator=generator),
        torch.rand(batch, 10, 512, generator=generator),
    )


def outputs(model: torch.nn.Module, inputs=None) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        output = model(*(inputs or make_inputs()))
    return {name: getattr(output, name) for name in OUTPUTS}


def assert_same_outputs(first: torch.nn.Module, second: torch.nn.Module) -> None:
    expected, actual = outputs(first), outputs(second)
    for name in OUTPUTS:
        assert torch.equal(expected[name], actual[name]), name


def small_model(name: str = "mgn", seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    defaults = {
        "mgn": {"dim": 16, "depth_audio": 1, "depth_visual": 2, "depth_av": 1},
        "han": {"dim": 32, "ff_dim": 48},
    }
    model = create_model(name, **(defaults[name] | overrides))
    with torch.no_grad():  # move every weight off its initial value so that a mix-up cannot go unnoticed
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval()


def read_official_keys(path: Path) -> dict[str, tuple[int, ...]]:
    """key -> shape from a ../shared/spec/official_keys file, in file order."""
    keys = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            keys[key] = tuple(int(size) for size in shape.split("x"))
    return keys


def official_mgn_keys(template: list[str], depths: tuple[int, int, int]) -> list[str]:
    """The authors' MGN key list for other depths, from the (3,3,6) list: `X.blocks.0.*` repeated per block."""
    counts = dict(zip(("audio_cug", "visual_cug", "av_mcg"), depths))
    keys = []
    for key in template:
        match = re.match(r"(\w+)\.blocks\.(\d+)\.(.*)", key)
        if not match:
            keys.append(key)
        elif match.group(2) == "0":
            block_keys = [k for k in template if k.startswith(f"{match.group(1)}.blocks.0.")]
            if key == block_keys[0]:
                for index in range(counts[match.group(1)]):
                    keys += [k.replace(".blocks.0.", f".blocks.{index}.") for k in block_keys]
    return keys


# ------------------------------------------------------------------------------------- our format


@pytest.mark.parametrize(
    "name, overrides",
    [("mgn", {}), ("mgn", {"unimodal_assign": "hard"}), ("mgn", {"crossmodal_assign": "hard"}), ("han", {})],
)
def test_save_load_round_trip(tmp_path, name, overrides):
    model = small_model(name, **overrides)
    path = tmp_path / "run" / "best.safetensors"
    save_checkpoint(path, model, metadata={"epoch": 7, "val": {"type": 55.5}})
    loaded, info = load_model(path)
    assert info["format"] == "avvp" and info["model"] == name
    assert loaded.config == model.config and not loaded.training
    assert info["metadata"] == {"epoch": 7, "val": {"type": 55.5}}
    assert_same_outputs(model, loaded)
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["model"] == name and record["config"] == model.config.to_dict()
    assert record["classes"] == list(CLASSES) and record["avvp_version"]
    assert record["metadata"]["epoch"] == 7 and record["parameters"] == count_parameters(model)
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.json", "best.safetensors"]  # no temp files left


def test_assignment_override_applies_to_our_checkpoints(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, small_model())
    loaded, info = load_model(path, unimodal_assign="hard")
    assert loaded.config.unimodal_assign == "hard" and info["config"]["unimodal_assign"] == "hard"


def test_weights_file_alone_is_enough(tmp_path):
    """The record is also in the safetensors header: a lost or stale JSON does not lose the model."""
    model = small_model(crossmodal_assign="hard")
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model)
    path.with_suffix(".json").unlink()
    loaded, _ = load_model(path)
    assert loaded.config == model.config
    assert_same_outputs(model, loaded)


def test_a_stale_json_beside_the_weights_loses_to_the_header_record(tmp_path, caplog):
    """A save interrupted between the two renames leaves an old JSON: the weights' own record wins, with a warning."""
    model = small_model(unimodal_assign="hard")
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model)
    record = json.loads(path.with_suffix(".json").read_text())
    record["config"]["unimodal_assign"] = "soft"
    path.with_suffix(".json").write_text(json.dumps(record))
    with caplog.at_level("WARNING"):
        loaded, _ = load_model(path)
    assert loaded.config.unimodal_assign == "hard"
    assert "does not match" in caplog.text


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    import safetensors.torch

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save", fail)  # save_checkpoint serialises with save(), then writes
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "m.safetensors", small_model())
    assert list(tmp_path.iterdir()) == []


def test_save_needs_a_safetensors_name(tmp_path):
    with pytest.raises(AvvpError, match="NAME.safetensors"):
        save_checkpoint(tmp_path / "m.pt", small_model())


# --------------------------------------------------------------------------------- authors' format


def test_export_has_the_authors_mgn_keys_and_shapes(official_keys_dir):
    """The default MGN exports exactly the keys and shapes of the authors' MGN_Net.pt, in their order."""
    expected = read_official_keys(official_keys_dir / "MGN_Net_dim128_aud3_vis3_av6.txt")
    exported = official_state_dict(create_model("mgn"))
    assert [(key, tuple(value.shape)) for key, value in exported.items()] == list(expected.items())


def test_export_has_the_authors_han_keys_and_shapes(official_keys_dir):
    expected = read_official_keys(official_keys_dir / "MMIL_Net_HAN.txt")
    exported = official_state_dict(create_model("han"))
    assert [(key, tuple(value.shape)) for key, value in exported.items()] == list(expected.items())
    assert sum(value.numel() for value in exported.values()) == 9_307_723


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("mgn", {}),
        ("mgn", {"unimodal_assign": "hard", "crossmodal_assign": "hard"}),
        ("mgn", {"dim": 24, "depth_audio": 2, "depth_visual": 1, "depth_av": 3, "crossmodal_assign": "hard"}),
        ("han", {}),
    ],
)
def test_export_then_import_gives_identical_outputs(tmp_path, name, overrides):
    model = small_model(name, **overrides)
    path = tmp_path / "official.pt"
    export_official(model, path)
    assign = {key: overrides[key] for key in ("unimodal_assign", "crossmodal_assign") if key in overrides}
    loaded, info = load_model(path, **assign)
    assert info["format"] == "official" and loaded.config == model.config
    assert_same_outputs(model, loaded)


@pytest.mark.parametrize(
    "depths, dim, assign",
    [
        ((3, 3, 6), 16, ("soft", "soft")),
        ((1, 2, 1), 32, ("hard", "soft")),
        ((2, 1, 2), 24, ("soft", "hard")),
        ((1, 1, 3), 8, ("hard", "hard")),
    ],
)
def test_authors_mgn_state_dict_built_by_renaming_loads_and_predicts_identically(
    tmp_path, official_keys_dir, depths, dim, assign
):
    """Our weights under the authors' names (paired in module order, independent of our key map)."""
    model = small_model(
        dim=dim,
        depth_audio=depths[0],
        depth_visual=depths[1],
        depth_av=depths[2],
        unimodal_assign=assign[0],
        crossmodal_assign=assign[1],
    )
    template = list(read_official_keys(official_keys_dir / "MGN_Net_dim128_aud3_vis3_av6.txt"))
    keys = official_mgn_keys(template, depths)
    ours = model.state_dict()
    assert len(keys) == len(ours)
    state_dict = {f"module.{key}": value.clone() for key, value in zip(keys, ours.values())}  # as saved under DDP
    path = tmp_path / "MGN_Net.pt"
    torch.save(state_dict, path)
    loaded, info = load_model(path, unimodal_assign=assign[0], crossmodal_assign=assign[1])
    assert (info["config"]["dim"], info["config"]["depth_audio"], info["config"]["depth_visual"]) == (dim, *depths[:2])
    assert info["config"]["depth_av"] == depths[2]
    assert_same_outputs(model, loaded)


def test_authors_han_with_unused_modules_loads_dropping_them(tmp_path, official_keys_dir, caplog):
    """A state dict with every key and shape of MMIL_Net_HAN.txt: 9,307,723 numbers, the unused ones dropped."""
    shapes = read_official_keys(official_keys_dir / "MMIL_Net_HAN.txt")
    generator = torch.Generator().manual_seed(0)
    state_dict = {key: torch.randn(shape, generator=generator) * 0.05 for key, shape in shapes.items()}
    assert sum(value.numel() for value in state_dict.values()) == 9_307_723
    path = tmp_path / "MMIL_Net.pt"
    torch.save(state_dict, path)
    with caplog.at_level("INFO"):
        model, info = load_model(path)
    assert count_parameters(model) == 4_569_675
    dropped = set(info["dropped_keys"])
    assert dropped == {key for key in shapes if not key.startswith(("fc_", "hat_encoder.layers."))}
    assert "audio_encoder" in caplog.text and "cmt_encoder" in caplog.text
    # The used weights landed where they belong: rename ours in module order and compare.
    used = [key for key in shapes if key not in dropped]
    for key, (our_key, value) in zip(used, model.state_dict().items()):
        assert torch.equal(value, state_dict[key]), (key, our_key)


@pytest.mark.parametrize("overrides", [{}, {"dim": 48, "ff_dim": 40}])
def test_authors_han_state_dict_built_by_renaming_loads_and_predicts_identically(
    tmp_path, official_keys_dir, overrides
):
    model = small_model("han", **overrides)
    used = [
        key
        for key in read_official_keys(official_keys_dir / "MMIL_Net_HAN.txt")
        if key.startswith(("fc_", "hat_encoder.layers."))
    ]
    state_dict = {f"_orig_mod.{key}": value for key, value in zip(used, model.state_dict().values())}
    path = tmp_path / "MMIL_Net.pt"
    torch.save(state_dict, path)
    loaded, info = load_model(path)
    assert loaded.config == model.config and info["dropped_keys"] == []
    assert_same_outputs(model, loaded)


# ----------------------------------------------------------------------------------------- errors


def test_unknown_format_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights\n")
    with pytest.raises(AvvpError, match="not a checkpoint avvp can read"):
        load_model(path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file_is_a_clear_error(tmp_path, suffix):
    model = small_model()
    path = tmp_path / f"m{suffix}"
    if suffix == ".pt":
        export_official(model, path)
    else:
        save_checkpoint(path, model)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AvvpError, match=r"cannot read .*truncated or corrupt"):
        load_model(path)


def test_missing_empty_and_foreign_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(AvvpError, match="does not exist"):
        load_model(tmp_path / "absent.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(AvvpError, match="is empty"):
        load_model(tmp_path / "empty.pt")
    torch.save({"conv1.weight": torch.zeros(3, 3)}, tmp_path / "resnet.pt")
    with pytest.raises(AvvpError, match="not a state dict of a model with a known format.*conv1.weight"):
        load_model(tmp_path / "resnet.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(AvvpError, match="does not hold a state dict"):
        load_model(tmp_path / "list.pt")


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state_dict = official_state_dict(small_model())
    del state_dict["fc_cls.bias"]
    state_dict["av_mcg.grouping.extra.weight"] = torch.zeros(2)
    torch.save(state_dict, tmp_path / "broken.pt")
    with pytest.raises(AvvpError) as err:
        load_model(tmp_path / "broken.pt")
    message = str(err.value)
    assert "1 missing: class_head.bias" in message and "1 unexpected: mcg.grouping.extra.weight" in message
    assert "\n" not in message


def test_wrong_shapes_are_named(tmp_path):
    state_dict = official_state_dict(small_model())
    state_dict["fc_prob.weight"] = torch.zeros(2, 16)
    torch.save(state_dict, tmp_path / "broken.pt")
    with pytest.raises(AvvpError, match=r"wrong shape: av_head.weight \[2, 16\] \(expected \[1, 16\]\)"):
        load_model(tmp_path / "broken.pt")


# -------------------------------------------------------------------------------------------- CLI


def test_export_command_both_ways(tmp_path, capsys):
    model = small_model(unimodal_assign="hard")
    ours = tmp_path / "best.safetensors"
    save_checkpoint(ours, model)
    official = tmp_path / "MGN_Net.pt"
    assert main(["export", "--checkpoint", str(ours), "--official", "--out", str(official)]) == 0
    assert "MGN_Net.pt" in capsys.readouterr().out
    back = tmp_path / "back.safetensors"
    assert main(["export", "--checkpoint", str(official), "--unimodal-assign", "hard", "--out", str(back)]) == 0
    loaded, info = load_model(back)
    assert loaded.config == model.config
    assert info["metadata"]["converted_from"]["format"] == "official"
    assert_same_outputs(model, loaded)
    assert main(["export", "--checkpoint", str(ours), "--official", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert main(["export", "--checkpoint", str(tmp_path / "absent.pt"), "--out", str(back)]) == 2
    assert "does not exist" in capsys.readouterr().err
