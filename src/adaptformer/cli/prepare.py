"""``adaptformer prepare``: turn an official SSv2/HMDB51 release into list files, or write a built-in dataset as
files in the layout of a user's own data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .args import at_least, extension, folder


def _cmd_write_builtin(args: argparse.Namespace) -> int:
    import yaml

    from ..data.builtin_files import write_builtin_dataset
    from ..validation import check_free_form

    try:
        options = yaml.safe_load(args.options) if args.options else {}
    except yaml.YAMLError as e:
        raise ValueError(f"--options {args.options!r} is not YAML: {e}") from None
    if not isinstance(options, dict):
        raise ValueError(f"--options must be a YAML mapping such as '{{num_samples: 256}}', got {args.options!r}")
    check_free_form("--options", options)  # {num_samples:8}: YAML's missing space after ':'
    print(json.dumps(write_builtin_dataset(args.release, args.out, options, num_frames=args.num_frames)))
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from ..data.video import prepare_hmdb51, prepare_ssv2

    common = {"video_dir": args.video_dir, "skip_missing": args.skip_missing,
              "relative_to": args.out if args.relative else None}  # fmt: skip
    if args.release == "ssv2":
        prepared = prepare_ssv2(args.root, args.out, video_ext=args.video_ext, **common)
    else:
        prepared = prepare_hmdb51(args.root, args.out, split=args.split, split_dir=args.split_dir, **common)
    lists = {name: str(path) for name, path in prepared.lists.items()}
    print(json.dumps({"dataset": args.release, "data_dir": str(Path(args.out)), "lists": lists,
                      "classes": len(prepared.classes), "videos": prepared.counts}))  # fmt: skip
    return 0


def add_prepare_command(sub: Any) -> None:
    prepare = sub.add_parser(
        "prepare", help="turn an official SSv2/HMDB51 release into list files, or write a built-in dataset as files",
        description="ssv2|hmdb51: write VideoMAE list files (train.txt, test.txt, classes.txt) for --data.dataset "
        "ssv2|hmdb51 --data.data_dir OUT; test.txt is the split the paper reports (SSv2: the official validation set; "
        "HMDB51: the test half of the chosen split). digits|synthetic|shapes|synthetic-video|digits-multilabel|"
        "digits-seg: write the built-in dataset as image, video or image + mask files in the layout of its file kind "
        "(imagefolder, videofolder, multilabel-list, segfolder), to try the file pipeline offline.",
    )  # fmt: skip
    releases = prepare.add_subparsers(dest="release", required=True)
    ssv2 = releases.add_parser("ssv2", help="Something-Something v2: labels/train/validation json + videos")
    hmdb = releases.add_parser("hmdb51", help="HMDB51: testTrainMulti_7030_splits/ + class folders of .avi")
    for parser in (ssv2, hmdb):
        parser.add_argument("--root", required=True, help="the release as downloaded (the error shows its layout)")
        parser.add_argument("--out", required=True, help="folder for the list files: pass it as --data.data_dir")
        parser.add_argument(
            "--video-dir", type=folder, default=None, help="folder of the videos (default: found under --root)"
        )
        parser.add_argument("--skip-missing", action="store_true", help="leave out listed videos that do not exist")
        parser.add_argument("--relative", action="store_true", help="write paths relative to --out (default: absolute)")
        parser.set_defaults(func=_cmd_prepare)
    ssv2.add_argument(
        "--video-ext", type=extension, default=".webm",
        help="video file extension, e.g. .mp4 for re-encoded copies (default: .webm)",
    )  # fmt: skip
    hmdb.add_argument("--split", type=int, default=1, choices=[1, 2, 3], help="official split (paper: 1; default: 1)")
    hmdb.add_argument(
        "--split-dir", type=folder, default=None, help="folder of the *_test_split<N>.txt files (default: found)"
    )
    from ..data.builtin_files import BUILTIN_KINDS, MULTI_LABEL, SEGMENTATION

    for kind in BUILTIN_KINDS:
        video = kind == "synthetic-video"
        layout = (
            "OUT/{train,test}/<class>/<n>.mp4 (--data.dataset videofolder)" if video
            else "OUT/images/, classes.txt, {train,test}.txt (--data.dataset multilabel-list)" if kind in MULTI_LABEL
            else "OUT/images/, masks/, classes.txt (--data.dataset segfolder)" if kind in SEGMENTATION
            else "OUT/{train,test}/<class>/<n>.png (--data.dataset imagefolder)"
        )  # fmt: skip
        built_in = releases.add_parser(kind, help=f"write the built-in {kind} dataset as files: {layout}")
        built_in.add_argument("--out", required=True, help="a new (or empty) folder: pass it as --data.data_dir")
        built_in.add_argument("--options", default=None, help="the kind's --data.options as YAML, e.g. '{seed: 1}'")
        if video:
            built_in.add_argument("--num-frames", type=at_least(2), default=16, help="frames per clip (default: 16)")
        built_in.set_defaults(func=_cmd_write_builtin, num_frames=16)
