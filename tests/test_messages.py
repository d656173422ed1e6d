"""What the scripts tell their users: `--help` with the flags' defaults and nothing a reader cannot open, and no
library noise that is known to be harmless (it would hide the messages that matter)."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.loading import load_for_training, load_lisa
from model.peft_setup import setup_trainable
from tests.lisa_fixtures import write_seg_emitter

REPO = Path(__file__).resolve().parent.parent
# The design notes the project was written from live outside the repository: citing them sends readers nowhere.
OUTSIDE_NOTES = "reference/lisa.md"
# (module, the arguments before --help)
SCRIPTS = [(name, []) for name in ("chat", "app", "train_ds", "merge_lora_weights", "eval_reasonseg", "model.tiny",
                                   "datasets.toy", "model.convert_lisa")]
SCRIPTS += [("datasets.custom_tools", [command]) for command in ("from_coco", "from_labelme")]
TYPE_WARNING = "instantiate a model of type"


@pytest.mark.parametrize("module, arguments", SCRIPTS)
def test_help_shows_defaults_and_cites_only_what_a_reader_can_open(module, arguments, monkeypatch, capsys):
    if module == "app":
        pytest.importorskip("gradio")
    monkeypatch.setattr(sys, "argv", [module, *arguments, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main()
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: " in text and "(default: None)" not in text
    assert OUTSIDE_NOTES not in text and "§" not in text


def test_no_file_cites_the_notes_outside_the_repository():
    citing = []
    for folder, subfolders, names in os.walk(REPO):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]  # .git, virtualenvs
        for name in names:
            path = Path(folder) / name
            if path.suffix in (".py", ".md", ".sh", ".txt", ".ini") and path != Path(__file__):
                if OUTSIDE_NOTES in path.read_text(errors="replace"):
                    citing.append(str(path.relative_to(REPO)))
    assert not citing


def test_the_help_of_a_switch_pair_states_one_default(capsys):
    import train_ds

    with pytest.raises(SystemExit):
        train_ds.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no_eval turn off --eval --eval_only" in text  # no "(default: True)" on --no_eval
    assert "peak learning rate (default: 0.0003)" in text


@pytest.fixture
def transformers_log() -> Iterator[list[str]]:
    """The messages transformers logs during a test (its own handler writes to a stream pytest cannot capture)."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


def test_loading_a_lisa_folder_logs_no_model_type_warning(tiny_dir, transformers_log):
    load_lisa(str(tiny_dir / "lisa"))
    assert not [message for message in transformers_log if TYPE_WARNING in message]


def test_lora_setup_warns_about_nothing(tiny_dir):
    model, _ = load_for_training(str(tiny_dir / "lisa"), vision_pretrained="")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        setup_trainable(model)
    assert [str(w.message) for w in caught] == []


@pytest.mark.slow
def test_chat_prints_only_its_answer_and_files(tiny_dir, tmp_path):
    """A one-shot chat on a 1x1 image: no DeepSpeed (chat does not use it), no model-type or channel-layout guess."""
    version = write_seg_emitter(str(tiny_dir / "lisa"), str(tmp_path / "seg_emitter"))
    image = tmp_path / "dot.png"
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(image)
    result = subprocess.run(
        [sys.executable, "chat.py", "--version", version, "--precision", "fp32", "--max_new_tokens", "2",
         "--vis_save_path", str(tmp_path / "vis"), "--image", str(image), "--prompt", "What is it?"],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    for noise in (TYPE_WARNING, "Setting accelerator to CPU", "channel dimension is ambiguous"):
        assert noise not in output
    assert "Saved mask: " in result.stdout


@pytest.mark.slow
def test_training_prints_no_scheduler_or_checkpointing_warning(tiny_dir, tmp_path):
    from tests.lisa_fixtures import run, train_command

    data = tmp_path / "toy"
    subprocess.run([sys.executable, "-m", "datasets.toy", "--out", str(data)], cwd=REPO, check=True, capture_output=True)
    output = run(train_command(tiny_dir, data, tmp_path / "runs" / "quiet", "--epochs", "1", "--steps_per_epoch", "1", "--no_eval"))
    for noise in ("get learning rate from scheduler before it has started", "is_gradient_checkpointing", TYPE_WARNING):
        assert noise not in output
