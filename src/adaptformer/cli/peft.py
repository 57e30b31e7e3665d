"""``adaptformer import-peft PEFT_DIR --out DIR``: a PEFT LoRA folder as this library's adapter folder
(:mod:`adaptformer.inference.peft_files`); ``adaptformer export --format peft`` is the way back (:mod:`.export`)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _cmd_import_peft(args: argparse.Namespace) -> int:
    from ..factory import BackboneSource
    from ..inference.peft_files import import_peft
    from ..saving import read_adapter_config

    source = BackboneSource(
        kwargs=args.model_kwargs or {}, checkpoint=args.checkpoint, checkpoint_source=args.checkpoint_source,
        init_seed=args.init_seed,
    )  # fmt: skip
    out = import_peft(args.peft_dir, args.out, args.backbone, source, overwrite=args.overwrite)
    info = read_adapter_config(out)
    print(json.dumps({"adapter": str(out), "backbone": info.spec.backbone, "num_classes": info.spec.num_classes,
                      "method_config": info.spec.to_dict()["method_config"]}))  # fmt: skip
    return 0


def add_import_peft_command(sub: Any) -> None:
    """The ``import-peft`` subcommand."""
    from ..backbones.checkpoints.load import CONVERTERS
    from .args import at_least, folder, yaml_mapping

    parser = sub.add_parser(
        "import-peft", help="turn a PEFT LoRA folder into an adaptformer adapter folder (exactly, or refused)",
        description="Reads PEFT's adapter_config.json (peft_type LORA) and adapter_model.safetensors (LoRA factors "
        "and the modules_to_save head) and writes this library's adapter folder for the backbone given here, built "
        "as PEFT's base model was (the same timm kwargs and weights: the folder records the backbone's fingerprint). "
        "LoRA on timm's fused attn.qkv becomes target qkv (one A shared by q, k and v), on attn.proj target o; "
        "on a transformers layer's q_proj, k_proj, v_proj, o_proj targets q, k, v, o. "
        "Refused, naming the key: another peft_type, rank_pattern/alpha_pattern, use_rslora, use_dora, bias other "
        "than none, target_modules that name nothing in the model or modules this library does not adapt.",
    )  # fmt: skip
    parser.add_argument("peft_dir", type=folder, metavar="PEFT_DIR", help="the PEFT folder (save_pretrained's)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the adapter folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an adapter already in --out")
    parser.add_argument("--model.backbone", dest="backbone", required=True, metavar="NAME",
                        help="PEFT's base model: a timm name (vit_base_patch16_224) or hf:<folder>, a "
                        "transformers folder (its weights are the folder's)")  # fmt: skip
    parser.add_argument("--model.kwargs", dest="model_kwargs", type=yaml_mapping, default=None, metavar="YAML",
                        help="timm kwargs the base model was built with, e.g. '{img_size: 32}'")  # fmt: skip
    parser.add_argument("--model.checkpoint", dest="checkpoint", default=None, metavar="PATH",
                        help="the base model's weights: a file, or timm for timm's own (default: none)")  # fmt: skip
    parser.add_argument("--model.checkpoint_source", dest="checkpoint_source", default="timm",
                        choices=tuple(CONVERTERS), help="key layout of --model.checkpoint (default: timm)")  # fmt: skip
    parser.add_argument("--model.init_seed", dest="init_seed", type=at_least(0), default=None, metavar="N",
                        help="with no checkpoint: the seed the base model was initialised with")  # fmt: skip
    parser.set_defaults(func=_cmd_import_peft)
