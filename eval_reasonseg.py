"""gIoU / cIoU of a LISA model (or of saved masks) on ReasonSeg val/test or a referring split; J&F on a video split.

    python eval_reasonseg.py --version DIR --dataset_dir ./dataset --split val
    torchrun --nproc_per_node 2 eval_reasonseg.py --version DIR --split test --batch_size 8 --output test.json
    python eval_reasonseg.py --pred_dir MASKS --split val          # saved masks, no model
    python eval_reasonseg.py --version DIR --dataset_dir ./dataset --val_dataset "refcoco|unc|val"
    python eval_reasonseg.py --version DIR --val_dataset "custom|MY_DATA|val"   # your own data (docs/custom_data.md)

Videos (ROOT: the data set's own folder; J, F and J&F as the MeViS / ReVOS scripts; ReVOS by referring / reasoning):

    python eval_reasonseg.py --version DIR --val_dataset "mevis|ROOT|valid_u" --output mevis.json
    python eval_reasonseg.py --version DIR --val_dataset "revos|ROOT|valid" --propagate per_frame --num_frames 8
    python eval_reasonseg.py --version DIR --val_dataset "reasonvos|ROOT|test" --save_masks PRED
    python eval_reasonseg.py --version DIR --val_dataset "refytvos|ROOT|valid" --save_masks PRED  # no public masks: PRED.zip to upload
    python eval_reasonseg.py --pred_dir PRED --val_dataset "mevis|ROOT|valid_u"   # saved PRED/<video>/<exp_id>/<frame>.png

Metrics as the original's `validate` in `train_ds.py` (see utils/metrics.py); results do not depend on --batch_size or the process count.
--load_in_8bit / --load_in_4bit quantise the language model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from model.cli import add_model_arguments, add_video_arguments, load_model, load_video_model_for
from datasets.hybrid import build_val_dataset
from datasets.vos import VOS_SETS, VideoValDataset, eval_question, parse_video_set, split_has_masks
from model.evaluation import MODES, evaluate
from model.video_evaluation import evaluate_video
from utils.cli import HelpFormatter, non_negative_int, positive_int
from utils.distributed import finish_distributed, gather_lists, init_distributed, rank_and_world
from utils.scoring import PredictionFiles, run_evaluation
from utils.locations import location_problem
from utils.metrics import format_table
from utils.video_metrics import format_video_table, score_prediction_folder, write_submission_zip

VIDEO_FLAGS = ("propagate", "video_memory", "save_masks")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_arguments(parser, max_new_tokens=128, version_required=False)  # --version: not needed with --pred_dir
    parser.add_argument("--dataset_dir", default="./dataset", help="data root holding reason_seg/ (and refer_seg/)")
    parser.add_argument("--split", default="val", choices=["val", "test"], help="ReasonSeg split to score")
    parser.add_argument(
        "--val_dataset",
        help='score another split instead: "ReasonSeg|val", a referring split "refcoco|unc|val", '
        '"refcocog|umd|test", gRefCOCO "grefcoco|unc|val", or a custom folder\'s split "custom|DIR|val" '
        '(no-target accuracy is added where some targets are empty); or a video split scored by J&F, ROOT being the '
        'data set\'s own folder: "mevis|ROOT|valid_u", "revos|ROOT|valid", "reasonvos|ROOT|test", "refytvos|ROOT|valid" '
        'or "mevis|ROOT|valid" (these two without public masks: see --save_masks). --split, --dataset_dir, '
        '--all_texts and --workers do not apply to videos',
    )
    parser.add_argument(
        "--mode", default="generate", choices=MODES,
        help="generate: the model answers and must emit [SEG] (none = empty mask); teacher: the original's "
        'validation, answer "[SEG]." given',
    )
    parser.add_argument("--all_texts", action="store_true",
                        help="score every text of a ReasonSeg image (every question of a custom image), not only the first")
    parser.add_argument("--batch_size", type=positive_int, default=1, help="images per forward pass / generation batch; on a video split, expressions of one video answered together "
                        "(its frames read and encoded once)")
    parser.add_argument("--workers", type=non_negative_int, default=2, help="processes reading samples (0: read in this process)")
    parser.add_argument("--pred_dir", help="score saved masks PRED_DIR/{stem}.png (nonzero = foreground); no model is loaded")
    parser.add_argument(
        "--output",
        help="write the figures (fractions), per-sample IoUs, the skipped samples and records ('skipped': 'name: "
        "reason') and, with --pred_dir, the unusable prediction files ('prediction_problems') to this JSON file",
    )
    video = parser.add_argument_group("video splits")
    add_video_arguments(video)
    video.add_argument("--save_masks", metavar="DIR",
                       help="also write the predicted masks as DIR/<video>/<exp_id>/<frame>.png (0/255, the "
                       "benchmarks' submission layout). Required for a split without public masks (Ref-YouTube-VOS "
                       "valid, MeViS valid), which is not scored: DIR.zip is then written for the benchmark's server")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help="set by the deepspeed launcher; unused")
    args = parser.parse_args(argv)
    if args.pred_dir is None and args.version is None:
        parser.error("give --version (a model to run) or --pred_dir (saved masks to score)")
    for flag in ("version", "pred_dir"):
        if getattr(args, flag) is not None and (problem := location_problem(getattr(args, flag))) is not None:
            parser.error(f"--{flag} {problem}")
    args.video = check_video_arguments(parser, args)
    return args


def check_video_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple | None:
    """(name, root, split) of a video `--val_dataset`, else None; refuses the flags that do not fit."""
    spec = args.val_dataset
    if spec is None or spec.split("|")[0] not in VOS_SETS:
        given = [f"--{flag}" for flag in VIDEO_FLAGS if getattr(args, flag) is not None]
        if given:
            parser.error(f"{', '.join(given)}: only for a video split (--val_dataset \"mevis|ROOT|valid_u\", ...)")
        return None
    try:
        name, root, split = parse_video_set(spec)
    except ValueError as error:
        parser.error(f"--val_dataset: {error}")
    if not os.path.isdir(root):
        parser.error(f"--val_dataset {spec!r}: no such folder {root}")
    if args.mode == "teacher":
        parser.error("--mode teacher does not apply to videos: the model answers each question itself")
    if args.propagate == "per_frame" and args.video_memory is not None:
        parser.error("--video_memory is for --propagate memory, not per_frame")
    if args.pred_dir is not None and args.save_masks is not None:
        parser.error("--save_masks writes a model's masks: not with --pred_dir")
    if not split_has_masks(name, root, split):
        if args.pred_dir is not None:
            parser.error(f"{name} {split} has no public masks: there is nothing to score --pred_dir against")
        if args.save_masks is None:
            parser.error(f"{name} {split} has no public masks and is not scored: give --save_masks DIR to write the "
                         "predicted masks and the submission zip DIR.zip")
    return name, root, split


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rank, _ = init_distributed()
    if args.video is not None:
        evaluate_video_split(args, rank)
        return
    name = args.val_dataset or f"ReasonSeg|{args.split}"
    dataset = build_val_dataset(args.dataset_dir, name, all_texts=args.all_texts)

    if args.pred_dir is not None:
        predictions = PredictionFiles(args.pred_dir)
        report = run_evaluation(dataset, predictions, batch_size=args.batch_size, workers=args.workers, description="files")
        problems = sorted(gather_lists(predictions.problems))
        source = args.pred_dir
    else:
        model, processor = load_model(args)
        report = evaluate(
            model, processor, dataset, mode=args.mode, batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens, workers=args.workers,
        )
        source = f"{args.version} ({args.mode})"
        problems = []
    finish_distributed()

    if rank != 0:
        return
    if report.skipped:
        print(f"{len(report.skipped)} unusable sample(s) skipped:\n  " + "\n  ".join(report.skipped))
    if problems:
        print(f"{len(problems)} prediction(s) missing or unusable, scored as empty masks:\n  " + "\n  ".join(problems))
    print(format_table(report.summary, title=f"{name}: {source}"))
    if args.output:
        with open(args.output, "w") as f:
            json.dump({**report.summary, "skipped": report.skipped, "prediction_problems": problems}, f, indent=2)
        print(f"wrote {args.output}")


def evaluate_video_split(args: argparse.Namespace, rank: int) -> None:
    """J&F of the model (or of --pred_dir's masks) on the video split `args.video`; the split's masks and zip
    where it has no public masks."""
    name, root, split = args.video
    expressions = VideoValDataset(name, root, split).expressions
    has_masks = split_has_masks(name, root, split)
    if args.pred_dir is not None:
        _, world = rank_and_world()
        scores = score_prediction_folder(expressions[rank::world], args.pred_dir)
        scores.gather()
        source = args.pred_dir
    else:
        model, processor = load_model(args)
        video_model = load_video_model_for(model, args)
        propagate = args.propagate
        scores = evaluate_video(
            model, processor, expressions, eval_question, num_frames=args.num_frames,
            max_new_tokens=args.max_new_tokens, propagate=propagate, video_model=video_model,
            save_dir=args.save_masks, batch_size=args.batch_size,
        )
        source = f"{args.version} ({propagate}, {args.num_frames} frames)"
    finish_distributed()

    if rank != 0:
        return
    title = f"{name}|{split}: {source}"
    if not has_masks:
        zip_path = args.save_masks.rstrip("/" + os.sep) + ".zip"
        count = write_submission_zip(args.save_masks, zip_path)
        print(f"{title}\n{name} {split} has no public masks: not scored. Wrote {count} predicted masks under "
              f"{args.save_masks} and the submission zip {zip_path} (upload it to the benchmark's server)")
        if args.output:
            with open(args.output, "w") as f:
                json.dump({"n": 0, "scored": False, "masks": count, "save_masks": args.save_masks,
                           "submission": zip_path}, f, indent=2)
            print(f"wrote {args.output}")
        return
    summary = scores.summary(groups=name == "revos")
    print(format_video_table(summary, title=title))
    if args.save_masks:
        print(f"wrote the predicted masks under {args.save_masks}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(summary, f, indent=2)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
