"""chat.py on the tiny model: one-shot and interactive (stdin piped), the PNGs it writes, every bad input."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import chat
from model.loading import load_for_inference
from model.session import ChatSession
from tests.lisa_fixtures import write_seg_emitter, write_turned_photo
from utils.vis import mask_colour, overlay, save_masks

IMAGE_SIZE = (37, 51)  # (H, W): odd, not square, unlike SAM's input
VIDEO_SIZE = (36, 50)  # mp4 frames have even sides


@pytest.fixture(scope="module")
def seg_model_dir(tiny_dir):
    """Answers "[SEG] . [SEG] . ..." until max_new_tokens (see write_seg_emitter): 3 tokens = 2 masks."""
    return write_seg_emitter(str(tiny_dir / "lisa"), str(tiny_dir / "seg_loop"), after_seg=".")


@pytest.fixture
def files(tmp_path):
    image = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (*IMAGE_SIZE, 3), dtype=np.uint8)).save(image)
    second = tmp_path / "second.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(second)
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not an image")
    return {"image": str(image), "second": str(second), "not_image": str(not_image), "missing": str(tmp_path / "nope.jpg"),
            "out": tmp_path / "vis"}


def args(model_dir, files, *extra):
    return ["--version", model_dir, "--precision", "fp32", "--max_new_tokens", "3", "--vis_save_path", str(files["out"]), *extra]


def check_pngs(out, stem, ks, size):
    for k in ks:
        mask = np.asarray(Image.open(out / f"{stem}_mask_{k}.png"))
        assert mask.dtype == np.uint8 and mask.shape == size and set(np.unique(mask)) <= {0, 255}
        over = Image.open(out / f"{stem}_masked_img_{k}.png")
        assert over.mode == "RGB" and over.size == (size[1], size[0])


def test_one_shot(seg_model_dir, files, capsys):
    chat.main(args(seg_model_dir, files, "--image", files["image"], "--prompt", "What is the red thing?"))
    out = capsys.readouterr().out
    assert "Answer: [SEG].[SEG]" in out
    check_pngs(files["out"], "photo", [0, 1], IMAGE_SIZE)
    assert f"Saved mask: {files['out'] / 'photo_mask_1.png'} (predicted IoU " in out  # the mask decoder's own score
    assert sorted(os.listdir(files["out"])) == sorted(
        f"photo_{kind}_{k}.png" for kind in ("mask", "masked_img") for k in (0, 1)
    )


def test_one_shot_bf16(seg_model_dir, files, capsys):
    chat.main(args(seg_model_dir, files, "--image", files["image"], "--prompt", "Segment it.", "--precision", "bf16"))
    check_pngs(files["out"], "photo", [0, 1], IMAGE_SIZE)


@pytest.mark.parametrize(
    "case, message",
    [("missing", "image file not found"), ("not_image", "cannot read image"), ("empty", "Empty prompt"), ("placeholder", "empty prompt")],
)
def test_one_shot_bad_input(seg_model_dir, files, case, message):
    image = files.get(case, files["image"])
    prompt = {"empty": "  ", "placeholder": "<image>"}.get(case, "What is it?")
    with pytest.raises(SystemExit) as exit_info:
        chat.main(args(seg_model_dir, files, "--image", image, "--prompt", prompt))
    assert message in str(exit_info.value.code)
    assert not files["out"].exists()


def test_interactive(seg_model_dir, files, capsys, monkeypatch):
    """Bad inputs are answered and the loop goes on; follow-ups keep the image and number masks on; a new
    image starts over; end of input quits."""
    lines = [
        "",  # empty prompt
        "what is it?", files["missing"],
        "what is it?", files["not_image"],
        "what is it?", "",  # no image yet
        "what is it?", files["image"],  # masks 0, 1
        "and the other one?", "",  # same image, same conversation: masks 2, 3
        "<image>", "",  # empty once the placeholder is dropped
        "now this one", files["second"],  # a new conversation: masks 0, 1 of "second"
    ]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    chat.main(args(seg_model_dir, files))
    out = capsys.readouterr().out
    assert "Empty prompt: please type a question." in out
    assert "nope.jpg: image file not found" in out
    assert "notes.jpg: cannot read image" in out
    assert "No image yet" in out
    assert "empty prompt: please type a question" in out
    assert out.count("Answer: ") == 3
    check_pngs(files["out"], "photo", [0, 1, 2, 3], IMAGE_SIZE)
    check_pngs(files["out"], "second", [0, 1], (20, 24))
    assert not (files["out"] / "second_mask_2.png").exists()


def test_images_of_one_name_keep_their_own_masks(seg_model_dir, files, tmp_path, capsys, monkeypatch):
    """Two different images called photo.* in one session: the second one's files are photo_2_*; the first image,
    given again, keeps its name."""
    other = tmp_path / "elsewhere" / "photo.png"
    other.parent.mkdir()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(other)
    lines = ["what is it?", files["image"], "and this?", str(other), "again?", files["image"]]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    chat.main(args(seg_model_dir, files))
    assert capsys.readouterr().out.count("Answer: ") == 3
    check_pngs(files["out"], "photo", [0, 1], IMAGE_SIZE)
    check_pngs(files["out"], "photo_2", [0, 1], (20, 24))
    assert not (files["out"] / "photo_3_mask_0.png").exists()


def test_a_phone_photo_s_masks_have_its_displayed_size(seg_model_dir, files):
    """A photo stored sideways with an EXIF orientation (as phones write them) gets masks the size it is displayed."""
    phone = os.path.join(os.path.dirname(files["image"]), "phone.jpg")
    write_turned_photo(phone, np.zeros((IMAGE_SIZE[1], IMAGE_SIZE[0], 3), np.uint8))
    chat.main(args(seg_model_dir, files, "--image", phone, "--prompt", "What is the red thing?"))
    check_pngs(files["out"], "phone", [0, 1], IMAGE_SIZE)


def test_exit_quits(seg_model_dir, files, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"what?\n{files['image']}\nexit\nnever asked\n"))
    chat.main(args(seg_model_dir, files))
    assert capsys.readouterr().out.count("Answer: ") == 1


def test_session_history(seg_model_dir, files):
    model, processor = load_for_inference(seg_model_dir, "fp32")
    session = ChatSession(model, processor, max_new_tokens=1)
    with pytest.raises(ValueError, match="no image"):
        session.ask("hello")
    session.set_image(np.zeros((10, 12, 3), np.uint8))
    first = session.ask("what?")
    second = session.ask("and?")
    assert (first.first_mask_index, second.first_mask_index) == (0, 1)
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert session.messages[0]["content"].startswith("<image>\n") and "<image>" not in session.messages[2]["content"]


def check_answers_as_fp32(seg_model_dir, files, capsys, *flags: str) -> None:
    """One-shot chat with `flags` answers as in fp32 (with no flags): the same text and the same masks (IoU >= 0.9)."""
    question = ("--image", files["image"], "--prompt", "What is the red thing?")
    chat.main(args(seg_model_dir, files, *question))
    expected = capsys.readouterr().out.splitlines()[0]
    chat.main(args(seg_model_dir, files, *question, *flags, "--vis_save_path", str(files["out"] / "flagged")))
    assert capsys.readouterr().out.splitlines()[0] == expected == "Answer: [SEG].[SEG]"
    for k in (0, 1):
        full = np.asarray(Image.open(files["out"] / f"photo_mask_{k}.png")) > 0
        flagged = np.asarray(Image.open(files["out"] / "flagged" / f"photo_mask_{k}.png")) > 0
        assert (full & flagged).sum() >= 0.9 * (full | flagged).sum()


@pytest.mark.parametrize("flag", ["--load_in_8bit", "--load_in_4bit"])
def test_one_shot_quantised(seg_model_dir, files, capsys, flag):
    """The language model quantised by bitsandbytes (here on the CPU) answers as the unquantised one."""
    check_answers_as_fp32(seg_model_dir, files, capsys, flag)


def test_both_quantisations_at_once_is_a_usage_error(seg_model_dir, files, capsys):
    with pytest.raises(SystemExit):
        chat.main(args(seg_model_dir, files, "--load_in_8bit", "--load_in_4bit"))
    assert "not allowed with argument" in capsys.readouterr().err


def test_usage_errors(seg_model_dir, files):
    with pytest.raises(SystemExit):
        chat.main(args(seg_model_dir, files, "--image", files["image"]))  # --prompt missing
    with pytest.raises(SystemExit) as exit_info:
        chat.main(["--version", str(files["out"] / "nowhere"), "--image", files["image"], "--prompt", "hi"])
    assert str(exit_info.value.code) == f"cannot load --version {files['out'] / 'nowhere'}: no such file or folder"


def test_overlay_colours():
    image = np.full((4, 4, 3), 100, np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[:2] = True
    first, second = overlay(image, mask, mask_colour(0)), overlay(image, mask, mask_colour(1))
    assert (first[2:] == 100).all() and not (first[:2] == second[:2]).all()
    with pytest.raises(ValueError):
        save_masks(image, [np.zeros((3, 3), bool)], "/tmp", "x")


@pytest.mark.slow
def test_interactive_piped_subprocess(seg_model_dir, files):
    """The real thing: stdin piped into `python chat.py`."""
    stdin = f"what is it?\n{files['image']}\nfollow up\n\n"
    result = subprocess.run(
        [sys.executable, "chat.py", *args(seg_model_dir, files)], input=stdin, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Answer: ") == 2
    check_pngs(files["out"], "photo", [0, 1, 2, 3], IMAGE_SIZE)


@pytest.mark.parametrize("tiny_base", [("qwen2_5_vl", "sam2")], indirect=True)
def test_pixel_budget_and_attention_flags_reach_the_model(tiny_base, files, monkeypatch, capsys):
    """`--max_pixels` and `--attn_implementation` (shared by chat.py, eval_reasonseg.py and app.py)."""
    import model.cli

    loaded = []
    monkeypatch.setattr(model.cli, "load_for_inference", lambda *a, **k: loaded.append(load_for_inference(*a, **k)) or loaded[-1])
    chat.main(args(str(tiny_base.lisa_dir), files, "--image", files["image"], "--prompt", "Where?", "--max_pixels", "512",
                   "--attn_implementation", "eager"))
    ((lisa, processor),) = loaded
    assert processor.image_processor.size["longest_edge"] == 512 and processor.preprocess_image(np.zeros((32, 64, 3), np.uint8)).token_counts == (2,)
    assert lisa.vlm.model.language_model.config._attn_implementation == lisa.vlm.model.visual.config._attn_implementation == "eager"
    with pytest.raises(SystemExit) as exit_info:
        chat.main(args(str(tiny_base.lisa_dir), files, "--image", files["image"], "--prompt", "Where?", "--max_pixels", "200"))
    assert "max_pixels 200 is below one image token of Qwen2.5-VL" in str(exit_info.value.code)


def test_a_pixel_budget_for_a_llava_model_is_refused(seg_model_dir, files):
    with pytest.raises(SystemExit) as exit_info:
        chat.main(args(seg_model_dir, files, "--image", files["image"], "--prompt", "hi", "--max_pixels", "100000"))
    assert f"cannot load {seg_model_dir}: max_pixels does not apply to LLaVA-1.5 models" in str(exit_info.value.code)


@pytest.fixture
def clip(tmp_path):
    """A 5-frame mp4 of VIDEO_SIZE frames, and a file that is not a video."""
    from utils.video import write_video

    frames = [np.random.default_rng(t).integers(0, 256, (*VIDEO_SIZE, 3), dtype=np.uint8) for t in range(5)]
    path = tmp_path / "clip.mp4"
    write_video(str(path), frames, fps=5)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    return {"video": str(path), "broken": str(broken)}


def test_one_shot_video_writes_every_frame_s_masks_and_an_overlay_video(seg_model_dir, files, clip, capsys):
    from utils.video import VideoReader

    chat.main(args(seg_model_dir, files, "--video", clip["video"], "--prompt", "Which one moves?", "--num_frames", "2",
                   "--propagate", "per_frame"))
    out = capsys.readouterr().out
    assert "Answer: [SEG].[SEG]" in out and "key frames [1, 3]" in out
    for k in (0, 1):
        names = sorted(os.listdir(files["out"] / "clip" / str(k)))
        assert names == [f"{i:05d}.png" for i in range(5)]
        for name in names:
            mask = np.asarray(Image.open(files["out"] / "clip" / str(k) / name))
            assert mask.shape == VIDEO_SIZE and set(np.unique(mask)) <= {0, 255}
    overlay_video = VideoReader(str(files["out"] / "clip" / "overlay_0.mp4"))
    assert len(overlay_video) == 5 and overlay_video.read(0).shape[:2] == VIDEO_SIZE


def test_video_bad_input_and_follow_ups(seg_model_dir, files, clip, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        chat.main(args(seg_model_dir, files, "--video", clip["broken"], "--prompt", "What moves?"))
    assert "broken.mp4" in str(exit_info.value.code)
    lines = ["what moves?", clip["video"], "and then?", "", "this one", files["image"]]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    chat.main(args(seg_model_dir, files, "--num_frames", "2", "--propagate", "per_frame"))
    out = capsys.readouterr().out
    assert out.count("Answer: ") == 3
    assert sorted(os.listdir(files["out"] / "clip")) == ["0", "1", "2", "3", "overlay_0.mp4", "overlay_2.mp4"]
    check_pngs(files["out"], "photo", [0, 1], IMAGE_SIZE)
