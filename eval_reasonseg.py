"""gIoU / cIoU of a LISA model (or of saved masks) on ReasonSeg val/test or a referring split.

    python eval_reasonseg.py --version DIR --dataset_dir ./dataset --split val
    torchrun --nproc_per_node 2 eval_reasonseg.py --version DIR --split test --batch_size 8 --output test.json
    python eval_reasonseg.py --pred_dir MASKS --split val          # saved masks, no model
    python eval_reasonseg.py --version DIR --dataset_dir ./dataset --val_dataset "refcoco|unc|val"
    python eval_reasonseg.py --version DIR --val_dataset "custom|MY_DATA|val"   # your own data (docs/custom_data.md)

Metrics as the original's `validate` in `train_ds.py` (see utils/metrics.py); results do not depend on --batch_size or the process count.
--load_in_8bit / --load_in_4bit quantise the language model.
"""

from __future__ import annotations

import argparse
import json
import logging

from model.cli import add_model_arguments, load_model
from datasets.hybrid import build_val_dataset
from model.evaluation import MODES, evaluate
from utils.cli import HelpFormatter, non_negative_int, positive_int
from utils.distributed import finish_distributed, gather_lists, init_distributed
from utils.scoring import PredictionFiles, run_evaluation
from utils.locations import location_problem
from utils.metrics import format_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_arguments(parser, max_new_tokens=128, version_required=False)  # --version: not needed with --pred_dir
    parser.add_argument("--dataset_dir", default="./dataset", help="data root holding reason_seg/ (and refer_seg/)")
    parser.add_argument("--split", default="val", choices=["val", "test"], help="ReasonSeg split to score")
    parser.add_argument(
        "--val_dataset",
        help='score another split instead: "ReasonSeg|val", a referring split "refcoco|unc|val", '
        '"refcocog|umd|test", gRefCOCO "grefcoco|unc|val", or a custom folder\'s split "custom|DIR|val" '
        '(no-target accuracy is added where some targets are empty)',
    )
    parser.add_argument(
        "--mode", default="generate", choices=MODES,
        help="generate: the model answers and must emit [SEG] (none = empty mask); teacher: the original's "
        'validation, answer "[SEG]." given',
    )
    parser.add_argument("--all_texts", action="store_true",
                        help="score every text of a ReasonSeg image (every question of a custom image), not only the first")
    parser.add_argument("--batch_size", type=positive_int, default=1, help="images per forward pass / generation batch")
    parser.add_argument("--workers", type=non_negative_int, default=2, help="processes reading samples (0: read in this process)")
    parser.add_argument("--pred_dir", help="score saved masks PRED_DIR/{stem}.png (nonzero = foreground); no model is loaded")
    parser.add_argument(
        "--output",
        help="write the figures (fractions), per-sample IoUs, the skipped samples and records ('skipped': 'name: "
        "reason') and, with --pred_dir, the unusable prediction files ('prediction_problems') to this JSON file",
    )
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help="set by the deepspeed launcher; unused")
    args = parser.parse_args(argv)
    if args.pred_dir is None and args.version is None:
        parser.error("give --version (a model to run) or --pred_dir (saved masks to score)")
    for flag in ("version", "pred_dir"):
        if getattr(args, flag) is not None and (problem := location_problem(getattr(args, flag))) is not None:
            parser.error(f"--{flag} {problem}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rank, _ = init_distributed()
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


if __name__ == "__main__":
    main()
