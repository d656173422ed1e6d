"""Tests of model/convert_lisa.py: released LISA v1 checkpoints run here exactly as in the original.

Tiny checkpoints are written in the released layouts — the 7B one (`<im_patch>`,
`<im_start>`, `<im_end>`, `[SEG]` after the base vocabulary) and the 13B one (`[SEG]`, `<im_start>`, `<im_end>`)
— with a sentencepiece `tokenizer.model`, bf16 LLM, fp32 SAM (segment-anything's own modules, random weights),
two `.bin` shards and an index that also lists `rotary_emb.inv_freq`, and a separate CLIP folder. A reference
computed from those original-layout weights by an independent path (sentencepiece tokenization by the
original's rules, `LlamaForCausalLM` on spliced input embeddings, segment-anything's mask decoder) must match
the converted model: ids, logits, generated ids, masks.
"""

from __future__ import annotations

import copy
import io
import json
import re
import types
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from model.families.llava import LLAVA_V1_SYSTEM
from model.loading import load_lisa
from model.quantization import dequantize
from model.convert_lisa import NotReleasedLisaError, convert_lisa, main
from model.inference import answer
from model.losses import IGNORE_LABEL
from tests.sam_reference import build_original_sam

IMAGE_PLACEHOLDER = -200  # the original's IMAGE_TOKEN_INDEX
CLIP_SIZE, CLIP_PATCH, CLIP_WIDTH = 32, 8, 32  # 16 patch tokens (256 for the real CLIP-224)
SAM_SIZE, SAM_PATCH, PROMPT_DIM = 64, 8, 32
HIDDEN = 64
QUESTION = "<image>\nWhat is the red circle in this image? Please output segmentation mask."
ANSWER = "Sure, it is [SEG] and [SEG]."
CORPUS = [
    LLAVA_V1_SYSTEM,
    "USER: ASSISTANT: What is the red circle in this image? Please output segmentation mask.",
    "Sure, it is the one on the left. There is no such object in the image.",
]
LAYOUTS = {
    # name: added tokens in id order after the base vocabulary (the released added_tokens.json)
    "7b": ("<im_patch>", "<im_start>", "<im_end>", "[SEG]"),
    "13b": ("[SEG]", "<im_start>", "<im_end>"),
}


# ------------------------------------------------------------------------------ released-layout builders
def train_sentencepiece() -> bytes:
    """A tiny LLaMA-like sentencepiece BPE model (byte fallback, dummy prefix, no whitespace normalisation)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4), model_writer=model, vocab_size=320, model_type="bpe", byte_fallback=True,
        split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, minloglevel=2,
    )
    return model.getvalue()


# The tiny SAM inside the released-layout checkpoints.
SAM_SIZES = dict(
    embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4, image_size=SAM_SIZE,
    patch_size=SAM_PATCH, prompt_dim=PROMPT_DIM, mask_in_chans=8, decoder_mlp_dim=64, iou_head_hidden_dim=24,
)


def write_clip(folder: Path) -> None:
    """A tiny `CLIPModel` (text and vision, as `openai/clip-vit-large-patch14`) with its image processor."""
    torch.manual_seed(2)
    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=CLIP_WIDTH, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                           image_size=CLIP_SIZE, patch_size=CLIP_PATCH),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": CLIP_SIZE}, crop_size={"height": CLIP_SIZE, "width": CLIP_SIZE}
    ).save_pretrained(folder)


def write_released(folder: Path, layout: str, sam: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A released LISA v1 folder (layout "7b" or "13b"); returns its weights as saved."""
    folder.mkdir()
    sp_model = train_sentencepiece()
    (folder / "tokenizer.model").write_bytes(sp_model)
    base = spm.SentencePieceProcessor(model_proto=sp_model).get_piece_size()
    added = {token: base + i for i, token in enumerate(LAYOUTS[layout])}
    vocab_size = base + len(added)
    token = lambda content: {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,  # noqa: E731
                             "rstrip": False, "single_word": False}
    files = {
        "added_tokens.json": added,
        "special_tokens_map.json": {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"},
        "tokenizer_config.json": {
            "add_bos_token": True, "add_eos_token": False, "bos_token": token("<s>"), "eos_token": token("</s>"),
            "unk_token": token("<unk>"), "clean_up_tokenization_spaces": False, "legacy": False, "model_max_length": 512,
            "pad_token": None, "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
        },
        "config.json": {
            "architectures": ["LISAForCausalLM"], "model_type": "llava", "hidden_size": HIDDEN, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "hidden_act": "silu",
            "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "initializer_range": 0.02, "vocab_size": vocab_size,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False, "use_cache": False,
            "torch_dtype": "bfloat16", "transformers_version": "4.31.0", "out_dim": PROMPT_DIM, "train_mask_decoder": True,
            "mm_vision_tower": "openai/clip-vit-large-patch14", "vision_tower": "openai/clip-vit-large-patch14",
            "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_hidden_size": CLIP_WIDTH,
            "mm_use_im_start_end": True, "mm_use_im_patch_token": False, "image_aspect_ratio": "square",
            "freeze_mm_mlp_adapter": True, "tune_mm_mlp_adapter": False,
        },
        "generation_config.json": {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
    }
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content))

    torch.manual_seed(3)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=512, rms_norm_eps=1e-6,
    ))
    with torch.no_grad():
        for name, parameter in llama.named_parameters():
            if "norm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))  # RMSNorm starts at ones
    weights = {key: value.bfloat16() for key, value in llama.state_dict().items()}
    projector = torch.nn.Linear(CLIP_WIDTH, HIDDEN)
    weights |= {"model.mm_projector.weight": projector.weight.detach().bfloat16(),
                "model.mm_projector.bias": projector.bias.detach().bfloat16()}
    fcs = torch.nn.Sequential(torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, PROMPT_DIM))
    weights |= {f"model.text_hidden_fcs.0.{key}": value.detach() for key, value in fcs.state_dict().items()}
    # pixel_mean / pixel_std are not saved by the released checkpoints.
    weights |= {f"model.visual_model.{k}": v.clone() for k, v in sam.state_dict().items() if not k.startswith("pixel_")}
    inv_freq = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": 1.0 / 10000 ** (torch.arange(0, 16, 2) / 16) for i in range(2)}

    shards = [dict(), dict()]
    for i, (key, value) in enumerate((weights | inv_freq).items()):
        shards[i % 2][key] = value
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save(shard, folder / name)
        weight_map |= dict.fromkeys(shard, name)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weights


# ------------------------------------------------------------------------------- the independent reference
class OriginalLisa:
    """LISA's forward as the original ran it, on the original-layout weights (fp32)."""

    def __init__(self, folder: Path, clip_folder: Path, weights: dict[str, torch.Tensor], sam: torch.nn.Module):
        config = json.loads((folder / "config.json").read_text())
        self.added = json.loads((folder / "added_tokens.json").read_text())
        self.sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        self.seg_id = self.added["[SEG]"]
        self.llama = LlamaForCausalLM(LlamaConfig(
            vocab_size=config["vocab_size"], hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=512, rms_norm_eps=1e-6,
        )).eval()
        llm = {k: v.float() for k, v in weights.items() if k.startswith(("model.embed_tokens", "model.layers", "model.norm", "lm_head"))}
        self.llama.load_state_dict(llm, strict=True)
        self.clip = CLIPVisionModel.from_pretrained(clip_folder).eval()
        self.projector = (weights["model.mm_projector.weight"].float(), weights["model.mm_projector.bias"].float())
        self.fcs = [weights[f"model.text_hidden_fcs.0.{k}"] for k in ("0.weight", "0.bias", "2.weight", "2.bias")]
        self.sam = sam

    def tokenize(self, prompt: str) -> list[int]:
        """`tokenizer_image_token` with the slow legacy tokenizer (the original's `mm_utils.py`): split at `<image>`, each
        chunk tokenized alone (added tokens strip the whitespace beside them, every text run gets sentencepiece's
        dummy prefix), one BOS kept, `<image>` -> -200."""
        prompt = prompt.replace("<image>", "<im_start><image><im_end>")
        specials = {**self.added, "<s>": 1, "</s>": 2}
        ids = [1]
        for i, chunk in enumerate(prompt.split("<image>")):
            if i:
                ids.append(IMAGE_PLACEHOLDER)
            parts = re.split("(" + "|".join(map(re.escape, specials)) + ")", chunk)
            for j, part in enumerate(parts):
                if part in specials:
                    ids.append(specials[part])
                    continue
                if j > 0 and parts[j - 1] in self.added:
                    part = part.lstrip()
                if j + 1 < len(parts) and parts[j + 1] in self.added:
                    part = part.rstrip()
                if part:
                    ids += self.sp.encode(part)
        return ids

    def decode(self, ids: list[int]) -> str:
        """The original's decode (transformers 4.31 slow tokenizer, special tokens kept): every added token and every
        run of ids between them decoded on its own (sentencepiece drops a run's leading "▁"), joined by spaces."""
        added_ids = {token_id: token for token, token_id in self.added.items()}
        pieces, run = [], []
        for token_id in ids:
            if token_id in added_ids:
                pieces += [self.sp.decode(run)] if run else []
                pieces.append(added_ids[token_id])
                run = []
            else:
                run.append(token_id)
        return " ".join(pieces + ([self.sp.decode(run)] if run else []))

    @torch.no_grad()
    def forward(self, ids: list[int], clip_pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (L, V), last post-norm hidden states (L, h)) with the image spliced in at -200."""
        features = self.clip(clip_pixels[None], output_hidden_states=True).hidden_states[-2][0, 1:]
        features = features @ self.projector[0].T + self.projector[1]
        at = ids.index(IMAGE_PLACEHOLDER)
        embed = self.llama.get_input_embeddings()
        embeds = torch.cat([embed(torch.tensor(ids[:at])), features, embed(torch.tensor(ids[at + 1 :]))])
        hidden = self.llama.model(inputs_embeds=embeds[None]).last_hidden_state[0]
        return self.llama.lm_head(hidden), hidden

    @torch.no_grad()
    def masks(self, hidden: torch.Tensor, expanded_ids: torch.Tensor, sam_pixels: torch.Tensor, resized, original) -> torch.Tensor:
        """Mask logits (n, H, W): hidden state before each [SEG] -> text_hidden_fcs -> segment-anything."""
        positions = (expanded_ids[1:] == self.seg_id).nonzero()[:, 0]
        w0, b0, w2, b2 = self.fcs
        queries = F.relu(hidden[positions] @ w0.T + b0) @ w2.T + b2
        image_embedding = self.sam.image_encoder(sam_pixels[None])
        grid = image_embedding.shape[-1]
        low_res, _ = self.sam.mask_decoder(
            image_embeddings=image_embedding,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=queries[:, None],
            dense_prompt_embeddings=self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(len(positions), -1, grid, grid),
            multimask_output=False,
        )
        return self.sam.postprocess_masks(low_res, tuple(resized), tuple(original))[:, 0]

    @torch.no_grad()
    def generate(self, ids: list[int], clip_pixels: torch.Tensor, max_new_tokens: int) -> list[int]:
        """Greedy, no cache, whole sequence recomputed every step, stop at EOS (the original's `evaluate`)."""
        new = []
        for _ in range(max_new_tokens):
            logits, _ = self.forward(ids + new, clip_pixels)
            new.append(int(logits[-1].argmax()))
            if new[-1] == 2:
                break
        return new


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def original_sam(sam_modeling: types.ModuleType) -> torch.nn.Module:
    return build_original_sam(sam_modeling, SAM_SIZES, seed=1)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    write_clip(folder)
    return folder


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def released(request, tmp_path_factory, original_sam, clip_folder) -> dict:
    """A released-layout folder, its conversion (written and reloaded in fp32) and the reference."""
    root = tmp_path_factory.mktemp(f"released_{request.param}")
    weights = write_released(root / "src", request.param, original_sam)
    convert_lisa(str(root / "src"), str(clip_folder), str(root / "out"))
    converted, processor = load_lisa(str(root / "out"), dtype=torch.float32)
    return {
        "layout": request.param, "src": root / "src", "out": root / "out", "model": converted.eval(),
        "processor": processor, "reference": OriginalLisa(root / "src", clip_folder, weights, original_sam),
    }


def image(seed: int = 0, height: int = 40, width: int = 52) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def conversation(answer: str | None = ANSWER) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": QUESTION}]
    return messages + ([{"role": "assistant", "content": answer}] if answer is not None else [])


def collapse_image(ids: list[int], image_token_id: int) -> list[int]:
    """Our expanded ids with the run of image tokens written as the original's single -200."""
    out = []
    for token in ids:
        if token != image_token_id:
            out.append(token)
        elif not out or out[-1] != IMAGE_PLACEHOLDER:
            out.append(IMAGE_PLACEHOLDER)
    return out


# ------------------------------------------------------------------------------------------------- tests
def test_token_ids_of_the_original(released):
    processor, reference = released["processor"], released["reference"]
    tokenizer = processor.tokenizer
    assert processor.seg_token_id == reference.seg_id
    for token, token_id in reference.added.items():
        if token != "<im_patch>":
            assert tokenizer.convert_tokens_to_ids(token) == token_id
    # 7B: the unused <im_patch> slot is the image token; 13B: a new id after the released vocabulary.
    expected_image_id = reference.added.get("<im_patch>", len(reference.added) + reference.sp.get_piece_size())
    assert processor.image_token_id == released["model"].config.vlm_config.image_token_id == expected_image_id

    system = LLAVA_V1_SYSTEM + " "
    cases = {
        "prompt": (conversation(None), f"{system}USER: {QUESTION} ASSISTANT:", True),
        "answer": (conversation(), f"{system}USER: {QUESTION} ASSISTANT: {ANSWER}</s>", False),
        "seg first": (conversation("[SEG]."), f"{system}USER: {QUESTION} ASSISTANT: [SEG].</s>", False),
        "digits": (conversation("2 of them"), f"{system}USER: {QUESTION} ASSISTANT: 2 of them</s>", False),
        "spaces": (conversation(" [SEG] ,it is  [SEG]"), f"{system}USER: {QUESTION} ASSISTANT:  [SEG] ,it is  [SEG]</s>", False),
    }
    for name, (messages, original_text, generation_prompt) in cases.items():
        ids, labels = processor.encode_conversation(messages, add_generation_prompt=generation_prompt)
        assert ids.count(processor.image_token_id) == 16, name
        assert collapse_image(ids, processor.image_token_id) == reference.tokenize(original_text), name
        if not generation_prompt:
            # Labels: exactly the answer and its </s>, i.e. everything after the original's generation prompt.
            prompt = reference.tokenize(f"{system}USER: {QUESTION} ASSISTANT:")
            start = len(prompt) - 1 + 16
            assert labels[:start] == [IGNORE_LABEL] * start, name
            assert labels[start:] == ids[start:] and ids[-1] == tokenizer.eos_token_id, name


def test_logits_and_masks_match_the_original(released):
    model, processor, reference = released["model"], released["processor"], released["reference"]
    masks = np.zeros((2, 40, 52), dtype=bool)
    batch = processor.collate([processor.process_sample(image(), [conversation()], masks)])
    with torch.no_grad():
        output = model(**{k: v for k, v in batch.items() if k not in ("labels", "masks")}, return_logits=True)
    ids = collapse_image(batch["input_ids"][0].tolist(), processor.image_token_id)
    expected_logits, hidden = reference.forward(ids, batch["image_inputs"].pixel_values[0])
    vocab = expected_logits.shape[-1]
    torch.testing.assert_close(output.logits[0, :, :vocab], expected_logits, atol=1e-4, rtol=1e-4)
    if released["layout"] == "13b":  # the extra <image> row repeats <unk>'s logit
        torch.testing.assert_close(output.logits[0, :, vocab], output.logits[0, :, 0], atol=0, rtol=0)

    expected_masks = reference.masks(
        hidden, batch["input_ids"][0], batch["sam_pixel_values"][0], batch["resized_sizes"][0].tolist(), (40, 52)
    )
    (pred,) = output.pred_masks
    assert pred.shape == expected_masks.shape == (2, 40, 52)
    torch.testing.assert_close(pred, expected_masks, atol=1e-4, rtol=1e-4)
    confident = expected_masks.abs() > 1e-3
    assert torch.equal((pred > 0)[confident], (expected_masks > 0)[confident])


def test_generation_matches_the_original(released):
    model, processor, reference = released["model"], released["processor"], released["reference"]
    (reply,) = answer(model, processor, [image(1)], [conversation(None)], max_new_tokens=8)
    clip_pixels = processor.preprocess_image(image(1)).pixel_values[0]
    prompt = reference.tokenize(f"{LLAVA_V1_SYSTEM} USER: {QUESTION} ASSISTANT:")
    assert reply.token_ids == reference.generate(prompt, clip_pixels, max_new_tokens=8)


@pytest.mark.parametrize(
    "answer_text, shown",
    [("Sure, [SEG].", "Sure, [SEG] ."), ("It is [SEG] and [SEG].", "It is [SEG] and [SEG] ."), ("[SEG].", "[SEG] ."),
     ("Sure, it is [SEG][SEG], 2 of them.", "Sure, it is [SEG] [SEG] , 2 of them.")],
)
def test_decoded_answers_read_as_the_original_printed_them(released, answer_text, shown):
    processor, reference = released["processor"], released["reference"]
    ids = reference.tokenize(answer_text)[1:]  # the ids the original model generates for this answer, without <s>
    assert processor.decode_answer(ids + [processor.tokenizer.eos_token_id]) == reference.decode(ids) == shown


def test_default_load_and_fine_tuning_start(released):
    """The converted folder as `train_ds.py --version` loads it: a training step gives finite losses."""
    from model.loading import load_for_training

    model, processor = load_for_training(str(released["out"]), vision_pretrained="unused")
    assert processor.chat_template == released["processor"].chat_template
    model.train()
    masks = np.random.default_rng(0).random((2, 40, 52)) > 0.5
    batch = processor.collate([processor.process_sample(image(2), [conversation()], masks)])
    assert int((batch["input_ids"] == processor.seg_token_id).sum()) == 2
    output = model(**batch)
    assert [m.shape[0] for m in output.pred_masks] == [2]
    for loss in (output.loss, output.ce_loss, output.mask_bce_loss, output.mask_dice_loss):
        assert torch.isfinite(loss)
    output.loss.backward()
    assert torch.isfinite(model.text_hidden_fcs[0].weight.grad).all()
    assert torch.isfinite(model.sam.mask_decoder.iou_token.weight.grad).all()


def test_dtypes_are_kept(released):
    """LLM and projector as released (bf16), SAM and the [SEG] projection fp32; the projector's second layer is
    the identity."""
    # (as `save_pretrained` writes them: llava-hf's checkpoint names)
    weights = load_file(str(released["out"] / "model.safetensors"))
    assert weights["vlm.language_model.model.embed_tokens.weight"].dtype == torch.bfloat16
    assert weights["vlm.multi_modal_projector.linear_1.weight"].dtype == torch.bfloat16
    assert torch.equal(weights["vlm.multi_modal_projector.linear_2.weight"], torch.eye(HIDDEN, dtype=torch.bfloat16))
    assert weights["sam.mask_decoder.iou_token.weight"].dtype == torch.float32
    assert weights["text_hidden_fcs.0.weight"].dtype == torch.float32


def test_cli_and_errors(released, clip_folder, tmp_path, monkeypatch, capsys):
    if released["layout"] != "7b":
        pytest.skip("layout-independent")
    argv = ["convert_lisa", "--src", str(released["src"]), "--clip", str(clip_folder), "--out", str(tmp_path / "cli")]
    monkeypatch.setattr("sys.argv", argv)
    main()
    assert "wrote" in capsys.readouterr().out
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["model_type"] == "lisa"

    with pytest.raises(NotReleasedLisaError, match="config.json"):
        convert_lisa(str(tmp_path / "cli"), str(clip_folder), str(tmp_path / "again"))  # already ours
    with pytest.raises(NotReleasedLisaError, match="config.json"):
        convert_lisa(str(tmp_path / "nowhere"), str(clip_folder), str(tmp_path / "again"))
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in released["src"].iterdir():
        if file.name != "pytorch_model-00002-of-00002.bin":
            (broken / file.name).write_bytes(file.read_bytes())
    with pytest.raises(NotReleasedLisaError, match="pytorch_model-00002-of-00002.bin"):
        convert_lisa(str(broken), str(clip_folder), str(tmp_path / "again"))


# ------------------------------------------------------------------------------------------- quantisation
# NF4's 16 values: quantiles of N(0, 1) scaled to [-1, 1] with an exact zero (Dettmers et al., "QLoRA", 2023).
NF4 = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
    -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
])


def nf4_round(weight: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Blocks of 64 consecutive weights (row-major), each scaled by its absmax, rounded to the nearest NF4 value."""
    blocks = weight.reshape(-1, block)
    absmax = blocks.abs().amax(1, keepdim=True)
    nearest = ((blocks / absmax)[..., None] - NF4).abs().argmin(-1)
    return (NF4[nearest] * absmax).reshape(weight.shape)


def int8_round(weight: torch.Tensor) -> torch.Tensor:
    """LLM.int8's row-wise absmax rounding to 127 levels (without its fp16 outlier columns: the coarser case)."""
    scale = weight.abs().amax(1, keepdim=True) / 127
    return (weight / scale).round() * scale


def mask_ious(expected: torch.Tensor, actual: torch.Tensor) -> list[float]:
    return [float((e & a).sum() / (e | a).sum()) for e, a in zip(expected > 0, actual > 0)]


@pytest.mark.slow
def test_quantised_language_model_answers_as_the_original(released):
    """Rounding the language model's linear weights as NF4 / int8 do keeps the masks (IoU >= 0.99) and every
    next-token choice that is not a near-tie; bitsandbytes' 4-bit and 8-bit models (on the CPU) hold that rounding
    and answer alike (IoU >= 0.9).

    Random weights make near-ties of greedy choices (logits of std 0.16 here, the top two often within 0.02, while
    NF4 moves logits by up to 0.04), so the text is compared position by position, teacher-forced, where the
    unrounded model's margin is > 0.1, and every logit must stay within half a standard deviation.
    """
    model, processor = released["model"], released["processor"]
    batch = processor.collate([processor.process_sample(image(), [conversation()], np.zeros((2, 40, 52), dtype=bool))])
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "masks")}
    answer_positions = batch["labels"][0] != IGNORE_LABEL

    def run(m):
        with torch.no_grad():
            output = m(**inputs, return_logits=True)
        return output.logits[0, answer_positions], output.pred_masks[0]

    expected_logits, expected_masks = run(model)
    top2 = expected_logits.topk(2).values
    clear = top2[:, 0] - top2[:, 1] > 0.1
    assert clear.any() and (expected_masks > 0).any()

    def check(m, min_iou, what):
        logits, masks = run(m)
        assert (logits - expected_logits).abs().max() <= 0.5 * expected_logits.std(), what
        assert torch.equal(logits.argmax(-1)[clear], expected_logits.argmax(-1)[clear]), what
        assert min(mask_ious(expected_masks, masks)) >= min_iou, what

    for rounding in (nf4_round, int8_round):
        rounded = copy.deepcopy(model)
        with torch.no_grad():
            for name, module in rounded.named_modules():
                if isinstance(module, torch.nn.Linear) and ".language_model." in name:
                    module.weight.copy_(rounding(module.weight))
        check(rounded, 0.99, rounding.__name__)
    for quantization in ("8bit", "4bit"):
        quantised, _ = load_lisa(str(released["out"]), dtype=torch.float32, quantization=quantization)
        check(quantised.eval(), 0.9, quantization)
    # What the 4-bit model computes with is the NF4 rounding above, up to its 8-bit quantised block scales.
    dequantize(quantised)
    assert not quantised.is_quantized and "quantization_config" not in quantised.config.to_dict()  # saves as a full one
    weights = dict(model.named_parameters())
    for name, weight in quantised.named_parameters():
        if ".language_model." in name and name.endswith("proj.weight"):
            torch.testing.assert_close(weight, nf4_round(weights[name]), atol=1e-2 * weights[name].abs().max().item(), rtol=0)
