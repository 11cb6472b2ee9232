"""docs/api.md runs: its Python blocks, executed in order in one namespace in a fresh folder, as a reader would."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from avvp.models import registry

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"

pytestmark = pytest.mark.usefixtures("one_thread")


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_every_code_block_of_the_api_walk_through_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    blocks = python_blocks(API_DOC.read_text())
    assert len(blocks) >= 7
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the models it registers go away after
    module = types.ModuleType("api_doc")  # a real module: dataclasses look their class's module up
    monkeypatch.setitem(sys.modules, "api_doc", module)
    namespace = module.__dict__
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"docs/api.md block {number}", "exec"), namespace)  # noqa: S102 (the doc's own code)
        except Exception as err:
            raise AssertionError(f"docs/api.md block {number} failed: {err!r}\n{block}") from err
    printed = capsys.readouterr().out
    assert "['mgn', 'han']" in printed and "TinyMIL TinyMILConfig(hidden=16)" in printed
    assert "dict_keys(['p_a', 'p_av', 'p_v', 'sparsity', 'total'])" in printed
    for run in ("han", "tiny-mil", "sparse", "relabelled"):
        assert (tmp_path / "runs" / run / "test_scores.json").is_file(), run
    assert (tmp_path / "MMIL_Net.pt").is_file() and (tmp_path / "labels.csv").is_file()
