"""Result tables: mean ± std over seeds, bold best per column, model sizes, CSV columns (fixed numbers)."""

from __future__ import annotations

import csv
import io
import math

import pytest

from avvp.metrics import TRACKS
from avvp.reports.tables import (
    ModelSize,
    ResultRow,
    best_rows,
    csv_table,
    format_mean_std,
    markdown_table,
    mean_std,
    size_cells,
)


def scores(audio: float, visual: float, av: float, event: float) -> dict[str, float]:
    return {"audio": audio, "visual": visual, "audio_visual": av, "type": (audio + visual + av) / 3, "event": event}


def row(method: str, cug: str, mcg: str, size: ModelSize, per_seed: list[dict[str, float]]) -> ResultRow:
    return ResultRow(
        method=method,
        settings=(("CUG depth", cug), ("MCG depth", mcg)),
        size=size,
        seeds=tuple(range(1, len(per_seed) + 1)),
        segment=tuple(per_seed),
        event=tuple({k: v - 10 for k, v in s.items()} for s in per_seed),
    )


HAN = ModelSize(4_569_675, released_parameters=9_307_723)
MGN = ModelSize(4_366_065)


def test_mean_std_uses_the_sample_deviation():
    assert mean_std([60.0, 61.0, 62.0]) == (61.0, 1.0)
    mean, std = mean_std([1.0, 2.0])
    assert mean == 1.5 and std == pytest.approx(math.sqrt(0.5))
    assert mean_std([55.5]) == (55.5, None)
    mean, std = mean_std([])
    assert math.isnan(mean) and std is None


def test_format_mean_std():
    assert format_mean_std(61.0, 1.0) == "61.0 ± 1.0"
    assert format_mean_std(60.04, 0.349) == "60.0 ± 0.3"
    assert format_mean_std(55.5, None) == "55.5"
    assert format_mean_std(57.25, None, decimals=2) == "57.25"
    assert format_mean_std(math.nan, None) == "–"


def test_size_cells_show_mb_with_one_decimal_and_exact_parameters():
    assert size_cells(MGN) == ("17.5", "4,366,065")
    assert size_cells(HAN) == ("37.2 released / 18.3 used", "9,307,723 / 4,569,675")


def test_markdown_table_layout_bold_and_mean_std():
    rows = [
        row("HAN", "–", "–", HAN, [scores(60.0, 52.0, 48.0, 55.0), scores(62.0, 54.0, 50.0, 57.0)]),
        row("MGN", "3/3", "6", MGN, [scores(61.0, 56.0, 50.0, 58.0), scores(61.0, 56.0, 52.0, 56.0)]),
    ]
    lines = markdown_table(rows).splitlines()
    assert lines[0] == (
        "| Method | CUG depth | MCG depth | Model Size (MB) | Parameters | Audio | Visual | Audio-Visual | Type@AV "
        "| Event@AV |"
    )
    assert lines[1] == "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    han_cells = [c.strip() for c in lines[2].strip("|").split("|")]
    mgn_cells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert han_cells[:5] == ["HAN", "–", "–", "37.2 released / 18.3 used", "9,307,723 / 4,569,675"]
    assert mgn_cells[:5] == ["MGN", "3/3", "6", "17.5", "4,366,065"]
    # Audio: HAN 61.0 ± 1.4 and MGN 61.0 ± 0.0 print the same mean: a tie, both bold.
    assert han_cells[5] == "**61.0 ± 1.4**" and mgn_cells[5] == "**61.0 ± 0.0**"
    # Visual: HAN 53.0 ± 1.4, MGN 56.0 ± 0.0 (best).
    assert han_cells[6] == "53.0 ± 1.4" and mgn_cells[6] == "**56.0 ± 0.0**"
    # Audio-visual: HAN 49.0, MGN 51.0 ± 1.4.
    assert han_cells[7] == "49.0 ± 1.4" and mgn_cells[7] == "**51.0 ± 1.4**"
    # Type@AV: mean of the three per seed: HAN (53.33, 55.33) -> 54.3; MGN (55.67, 56.33) -> 56.0.
    assert han_cells[8] == "54.3 ± 1.4" and mgn_cells[8] == "**56.0 ± 0.5**"
    # Event@AV: HAN 56.0 ± 1.4 vs MGN 57.0 ± 1.4.
    assert han_cells[9] == "56.0 ± 1.4" and mgn_cells[9] == "**57.0 ± 1.4**"
    # The event-level table uses the other scores (here all 10 lower).
    event_lines = markdown_table(rows, level="event").splitlines()
    assert "**46.0 ± 0.0**" in event_lines[3]


def test_single_seed_has_no_deviation_and_missing_rows_show_a_dash():
    rows = [
        row("MGN", "1/1", "2", ModelSize(2_779_889), [scores(40.0, 30.0, 20.0, 35.0)]),
        row("MGN", "2/2", "4", ModelSize(3_572_977), []),
    ]
    lines = markdown_table(rows).splitlines()
    assert "| **40.0** | **30.0** | **20.0** | **30.0** | **35.0** |" in lines[2]
    assert lines[3].endswith("| – | – | – | – | – |")
    assert best_rows(rows, "segment", "audio") == {0}


def test_best_rows_compares_printed_values():
    rows = [
        row("MGN", "a", "b", MGN, [scores(50.04, 1, 1, 1)]),
        row("MGN", "c", "d", MGN, [scores(50.01, 1, 1, 1)]),
        row("MGN", "e", "f", MGN, [scores(49.94, 1, 1, 1)]),
    ]
    assert best_rows(rows, "segment", "audio") == {0, 1}  # both print as 50.0
    assert best_rows(rows, "segment", "audio", decimals=2) == {0}


def test_csv_table_columns_and_values():
    rows = [
        row("HAN", "–", "–", HAN, [scores(60.0, 52.0, 48.0, 55.0), scores(62.0, 54.0, 50.0, 57.0)]),
        row("MGN", "3/3", "6", MGN, [scores(61.0, 56.0, 50.0, 58.0)]),
        row("MGN", "1/1", "2", ModelSize(2_779_889), []),
    ]
    records = list(csv.DictReader(io.StringIO(csv_table(rows))))
    assert len(records) == 3
    expected_columns = ["method", "cug_depth", "mcg_depth", "size_mb", "parameters", "released_size_mb",
                        "released_parameters", "seeds"]  # fmt: skip
    expected_columns += [f"{lv}_{t}_{s}" for lv in ("segment", "event") for t in TRACKS for s in ("mean", "std")]
    assert list(records[0]) == expected_columns
    han, mgn, empty = records
    assert (han["size_mb"], han["parameters"]) == ("18.3", "4569675")
    assert (han["released_size_mb"], han["released_parameters"]) == ("37.2", "9307723")
    assert han["seeds"] == "1;2"
    assert han["segment_audio_mean"] == "61.0000" and float(han["segment_audio_std"]) == pytest.approx(2**0.5, 1e-4)
    assert han["event_audio_mean"] == "51.0000"
    assert mgn["released_size_mb"] == "" and mgn["segment_visual_mean"] == "56.0000" and mgn["segment_visual_std"] == ""
    assert empty["seeds"] == "" and empty["segment_type_mean"] == "" and empty["size_mb"] == "11.1"


def test_empty_table_is_refused():
    with pytest.raises(ValueError):
        markdown_table([])


def test_runs_table_shows_the_last_epochs_and_their_gain() -> None:
    from avvp.reports.tables import RunSummary, runs_table

    rising = RunSummary("mgn-seed1", 6, False, 6, (10.0, 20.0, 30.0, 31.0, 30.5, 32.25), 33.0)
    stopped = RunSummary("han-seed1", 5, True, 1, (55.0, 54.0, 53.0, 54.5, 52.0), 54.7)
    short = RunSummary("han-seed2", 2, True, 2, (50.0, 51.0), 50.5)
    lines = runs_table([rising, stopped, short]).splitlines()
    assert lines[0] == "| Run | Epochs | Stopped early | Best epoch | Val Type@AV, last 4 epochs | Gain | Test |"
    # last four: 30.0 31.0 30.5 32.25, the best before them 20.0 -> +12.2 (32.25 - 20.0 = 12.25, rounded half even)
    assert lines[2] == "| mgn-seed1 | 6 | no | 6 | 30.0 31.0 30.5 32.2 | +12.2 | 33.0 |"
    assert lines[3] == "| han-seed1 | 5 | yes | 1 | 54.0 53.0 54.5 52.0 | -0.5 | 54.7 |"
    assert lines[4] == "| han-seed2 | 2 | yes | 2 | 50.0 51.0 |  | 50.5 |"
