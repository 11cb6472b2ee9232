"""`avvp export`: convert between our checkpoints and the authors' format."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from avvp.cli.common import add_assign_args
from avvp.errors import AvvpError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a checkpoint in the authors' format (--official) or re-save an authors' one as ours",
        description="With --official: write the model as the authors' plain state dict (MGN_Net.pt / MMIL_Net.pt "
        "key names), so it runs in their scripts. Without: save any checkpoint (e.g. an authors' MGN_Net.pt) as an "
        "avvp checkpoint, NAME.safetensors with NAME.json beside it.",
    )
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="avvp checkpoint or authors' .pt file")
    parser.add_argument(
        "--out", required=True, metavar="PATH", help="file to write: NAME.safetensors, or with --official NAME.pt"
    )
    parser.add_argument("--official", action="store_true", help="write the authors' format (torch.save state dict)")
    add_assign_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from avvp.checkpoint import export_official, load_model, save_checkpoint
    from avvp.models import count_parameters
    from avvp.models.registry import config_to_dict, spec_of

    out = Path(args.out)
    if args.official and out.suffix == ".safetensors":
        raise AvvpError(f"--out {out}: the authors' format is a torch.save file; name it e.g. MGN_Net.pt")
    model, info = load_model(
        args.checkpoint, unimodal_assign=args.unimodal_assign, crossmodal_assign=args.crossmodal_assign
    )
    spec = spec_of(model)
    if args.official:
        export_official(model, out)
        if not model.cross_modal:
            log.warning(
                "%s was trained in its cross-modal-free form, which the authors' format cannot record: their code "
                "(and a re-import) runs it with the exchange between the modalities",
                args.checkpoint,
            )
        unrecorded = spec.official.unrecorded if spec.official else ()
        if unrecorded:
            settings = ", ".join(f"{key} {getattr(model.config, key)}" for key in unrecorded)
            log.info("the authors' format does not record %s: run it with %s", ", ".join(unrecorded), settings)
    else:
        metadata = dict(info["metadata"])
        metadata["converted_from"] = {"path": str(args.checkpoint), "format": info["format"]}
        if info["dropped_keys"]:
            metadata["converted_from"]["dropped_keys"] = len(info["dropped_keys"])
        save_checkpoint(out, model, metadata=metadata)
    config = ", ".join(f"{key} {value}" for key, value in config_to_dict(model.config).items())
    print(f"wrote {out}: {spec.title} ({config}), {count_parameters(model):,} parameters")
    return 0
