"""The rows of the sweeps' tables: which models and settings each kind trains, and how the table names them.

`depth` is the MGN paper's Table 1 (HAN and six MGN depths), `assign` its Table 2 (Softmax or Hard-Softmax in the
CUG and the MCG), `models` any registered models (built-in or plugins) at their default configurations, one row
each. Nothing here trains or reads a run folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from avvp.errors import AvvpError
from avvp.models import paper_table_configs
from avvp.models.registry import PLUGINS_ENV, get_spec, list_models, make_config

SWEEP_KINDS = ("depth", "assign", "models")
ASSIGN_TITLES = {"soft": "Softmax", "hard": "Hard-Softmax"}
TABLE_TITLES = {
    "depth": "Table 1: CUG and MCG depths",
    "assign": "Table 2: Softmax or Hard-Softmax assignment",
    "models": "Registered models at their default configurations",
}


@dataclass(frozen=True)
class SweepConfig:
    """One row of a table: a model configuration, trained once per seed."""

    name: str  # run folder stem, e.g. "mgn-3-3-6" (runs are OUT/<name>-seed<k>)
    method: str  # the table's Method column: the model's title, e.g. "MGN"
    model: str  # the registered model's name, e.g. "mgn"
    overrides: dict[str, Any]  # model config overrides
    settings: tuple[tuple[str, str], ...]  # the table's configuration columns, (title, cell); none in `models`


def _mgn_name(overrides: dict[str, Any]) -> str:
    """`mgn-A-V-AV`, plus `-UNI-CROSS` assignment kinds unless both are soft (the paper's default)."""
    config = make_config("mgn", **overrides)
    name = f"mgn-{config.depth_audio}-{config.depth_visual}-{config.depth_av}"
    if (config.unimodal_assign, config.crossmodal_assign) != ("soft", "soft"):
        name += f"-{config.unimodal_assign}-{config.crossmodal_assign}"
    return name


def depth_configs() -> list[SweepConfig]:
    """Table 1: HAN and MGN at depths (1,1,2), (2,2,4), (3,3,6), (4,4,8), (3,3,3), (6,6,3)."""
    configs = []
    for _, model, overrides in paper_table_configs():
        grouped = "depth_av" in overrides  # an MGN row; the baseline's depth cells are dashes
        cug = f"{overrides['depth_audio']}/{overrides['depth_visual']}" if grouped else "–"
        settings = (("CUG depth", cug), ("MCG depth", str(overrides["depth_av"]) if grouped else "–"))
        name = _mgn_name(overrides) if grouped else model
        configs.append(SweepConfig(name, get_spec(model).title, model, dict(overrides), settings))
    return configs


def assign_configs() -> list[SweepConfig]:
    """Table 2: Softmax or Hard-Softmax assignment in the CUG (unimodal) and the MCG (cross-modal), depths (3,3,6)."""
    configs = []
    for unimodal in ("soft", "hard"):
        for crossmodal in ("soft", "hard"):
            overrides = {
                "depth_audio": 3,
                "depth_visual": 3,
                "depth_av": 6,
                "unimodal_assign": unimodal,
                "crossmodal_assign": crossmodal,
            }
            settings = (("CUG assignment", ASSIGN_TITLES[unimodal]), ("MCG assignment", ASSIGN_TITLES[crossmodal]))
            configs.append(SweepConfig(_mgn_name(overrides), "MGN", "mgn", overrides, settings))
    return configs


def model_configs(names: Sequence[str] | None = None) -> list[SweepConfig]:
    """One row per registered model at its default configuration, named after the model and titled as its spec
    says: the models `names` in that order, else every registered one (built-in first, then the plugins')."""
    known = list_models()
    names = list(dict.fromkeys(names)) if names else known
    unknown = [name for name in names if name not in known]
    if unknown:
        raise AvvpError(
            f"--configs: unknown model{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; registered: "
            f"{', '.join(known)} (a plugin's model? set ${PLUGINS_ENV} to its module)"
        )
    return [SweepConfig(name, get_spec(name).title, name, {}, ()) for name in names]


def sweep_configs(kind: str, names: Sequence[str] | None = None) -> list[SweepConfig]:
    """The rows of sweep `kind` ('depth', 'assign' or 'models'), optionally only those named (in the table's order;
    for 'models', in the order named)."""
    if kind not in SWEEP_KINDS:
        raise AvvpError(f"unknown sweep {kind!r}; choose one of {', '.join(SWEEP_KINDS)}")
    if kind == "models":
        return model_configs(names)
    configs = depth_configs() if kind == "depth" else assign_configs()
    if names:
        known = [config.name for config in configs]
        unknown = [name for name in names if name not in known]
        if unknown:
            raise AvvpError(f"--configs: {', '.join(unknown)} not in the {kind} sweep; choose from {', '.join(known)}")
        configs = [config for config in configs if config.name in names]
    return configs
