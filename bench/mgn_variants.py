"""A bench experiment on MGN, registered as a plugin (`AVVP_PLUGINS=mgn_variants`, with bench/ on PYTHONPATH):
not a model of avvp, and no flag of `avvp train` (docs/experiments.md, Table 2).

`mgn-same-kind`: MGN whose audio CUG groups the audio segments with the visual segments through the SAME
assignment kind as its class grouping, where the authors' code (and avvp's MGN) uses the opposite kind there.
With `--model-arg unimodal_assign=hard` both of the audio CUG's groupings are then Hard-Softmax; with the default
Softmax CUG both are Softmax. Its weights, their names and their initial values are MGN's: only the kind of one
assignment changes, so a run of it and an MGN run of the same seed start from the same weights.

    PYTHONPATH=bench AVVP_PLUGINS=mgn_variants avvp train --model mgn-same-kind \\
        --model-arg unimodal_assign=hard --model-arg crossmodal_assign=soft ...
"""

from __future__ import annotations

import avvp
from avvp.models import MGNConfig
from avvp.models.mgn import MGN
from avvp.models.registry import get_spec

_MGN = get_spec("mgn")


@avvp.register_model(
    "mgn-same-kind",
    config=MGNConfig,
    title="MGN (same-kind audio-visual grouping)",
    loss_terms=_MGN.loss_terms,
    validation_record=_MGN.validation_record,
    stackable=True,
    cross_modal_free=True,
)
class MGNSameKind(MGN):
    """MGN with its audio CUG's grouping with the visual segments of the class grouping's own kind."""

    def __init__(self, config: MGNConfig | None = None) -> None:
        super().__init__(config)
        self.audio_cug.visual_grouping.assign.kind = self.config.unimodal_assign
