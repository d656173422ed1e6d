"""A web demo of a LISA model (Gradio): upload an image or a video, ask a question, get the answer and its masks.

    python app.py --version DIR [--host 127.0.0.1 --port 7860] [--load_in_4bit]
                  [--num_frames 16] [--propagate memory|per_frame] [--video_memory CHECKPOINT]

then open http://127.0.0.1:7860. The "Image" and "Video" tabs pick what the question is about.

* Image: every [SEG] of an answer is overlaid on the image in its own colour and its mask is offered as a PNG
  (0/255) beside the overlay.
* Video: the model sees `--num_frames` key frames spread over the video; each [SEG]'s mask is carried to every frame
  (`--propagate`: `memory`, the mask head's video model, or `per_frame`, decoding on each frame) and written as one
  PNG per frame, `<vis>/conversation_*/<video stem>/<k>/<frame>.png` for the k-th mask of the conversation; the
  frames with the answer's masks overlaid come back as a video, the PNGs as a zip. The video model (its memory
  modules from `--video_memory`) is loaded on the first video asked about.

The answer shows the mask decoder's predicted IoU of each mask. Follow-up questions continue the conversation on the
same image or video (a video's on the same key frames); uploading another image or video, or pressing "Clear",
starts a new one. Requests are queued and run one at a time on the one model. The answering path is `chat.py`'s
(`model.session.ChatSession`, `model.session.VideoChatSession`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import zipfile

# Before gradio is imported: no telemetry and no version check against api.gradio.app (the demo must start
# and run on machines without internet).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from model.cli import add_model_arguments, add_video_arguments, load_model  # noqa: E402
from model.lisa import LisaForCausalLM  # noqa: E402
from model.processing import LisaProcessor  # noqa: E402
from model.session import ChatSession, VideoChatSession  # noqa: E402
from model.video import ANSWER_FRAMES, LazyVideoModel, default_propagation  # noqa: E402
from utils.cli import HelpFormatter  # noqa: E402
from utils.images import ImageError, load_image  # noqa: E402
from utils.video import VideoError, VideoReader, write_video  # noqa: E402
from utils.vis import mask_colour, overlay, overlay_video_frames, save_masks, save_video_masks  # noqa: E402

EXAMPLES = [
    "What is the object in this image that is round? Please output segmentation mask.",
    "Can you segment the red circle in this image?",
    "Please segment the largest object in this image and explain why.",
    "Which part of the image would a person sit on? Please output segmentation mask.",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on")
    parser.add_argument("--vis_save_path", help="folder for the mask and overlay files (default: a new temporary folder)")
    video = parser.add_argument_group("videos")
    add_video_arguments(video)
    return parser.parse_args(argv)


class Conversation:
    """One browser tab's conversation on the shared model: a `ChatSession` about an image file, or a
    `VideoChatSession` about a video file (`reader` reads it, `out_dir` holds its mask files)."""

    def __init__(self, session: ChatSession | VideoChatSession, path: str):
        self.session, self.path = session, path
        self.reader: VideoReader | None = None
        self.out_dir: str | None = None

    @property
    def kind(self) -> str:
        return "video" if isinstance(self.session, VideoChatSession) else "image"


def user_error(message: str) -> gr.Error:
    """A message for the page about a bad request (no traceback in the server log: nothing went wrong there)."""
    return gr.Error(message, print_exception=False)


def mask_note(count: int, scores: list[float], first: int) -> str:
    """What the chat adds to an answer: how many masks, and each one's predicted IoU."""
    if not count:
        return "\n\n(no [SEG] in the answer: no mask)"
    listed = ", ".join(f"mask {k}: {score:.2f}" for k, score in enumerate(scores, start=first))
    return f"\n\n({count} mask{'s' * (count != 1)})\npredicted IoU: {listed}"


def zip_masks(out_dir: str, folders: list[str], first: int) -> str:
    """A zip of the per-frame mask PNGs in `folders` (one answer's masks, numbered from `first`), kept in their
    layout `<video stem>/<k>/<frame>.png`; its path."""
    last = first + len(folders) - 1
    stem = os.path.basename(os.path.dirname(folders[0]))
    path = os.path.join(out_dir, f"{stem}_masks_{first}.zip" if last == first else f"{stem}_masks_{first}-{last}.zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for folder in folders:
            for name in sorted(os.listdir(folder)):
                archive.write(os.path.join(folder, name), os.path.relpath(os.path.join(folder, name), out_dir))
    return path


def build_demo(
    model: LisaForCausalLM,
    processor: LisaProcessor,
    max_new_tokens: int,
    vis_save_path: str,
    num_frames: int = ANSWER_FRAMES,
    propagate: str | None = None,
    video_memory: str | None = None,
) -> gr.Blocks:
    propagate = propagate or default_propagation(model)
    video_model = LazyVideoModel(model, video_memory)  # one for every tab

    def ask(
        source: str, image_path: str | None, video_path: str | None, prompt: str, conversation: Conversation | None,
        history: list[dict],
    ) -> tuple[Conversation, list[dict], np.ndarray | None, str | None, list[str] | None, str]:
        """One question about the image or the video (`source`, the tab shown): (conversation, chat shown, overlay
        of the answer's masks on the image, or the video of them, files to download, emptied prompt)."""
        if source == "video":
            return ask_video(video_path, prompt, conversation, history)
        return ask_image(image_path, prompt, conversation, history)

    def ask_image(
        image_path: str | None, prompt: str, conversation: Conversation | None, history: list[dict]
    ) -> tuple[Conversation, list[dict], np.ndarray, None, list[str] | None, str]:
        # Checked here rather than by ChatSession so that a bad request does not end the conversation.
        if image_path is None:
            raise user_error("No image: please upload an image first.")
        if not prompt or not prompt.strip():
            raise user_error("Empty prompt: please type a question.")
        if conversation is None or conversation.kind != "image" or conversation.path != image_path:
            try:
                image = load_image(image_path)
            except ImageError as error:  # not an image, truncated, ...
                # Named as uploaded, not by its path on the server.
                message = str(error).replace(image_path, os.path.basename(image_path))
                raise user_error(f"Cannot read the uploaded image: {message}") from None
            conversation = Conversation(ChatSession(model, processor, max_new_tokens), image_path)
            conversation.session.set_image(image)
            history = []
        session = conversation.session
        try:
            turn = session.ask(prompt)
        except ValueError as error:  # e.g. a prompt that was only the image placeholder
            raise user_error(str(error)) from None
        masks = [m.numpy() for m in turn.answer.masks]
        # A folder per answer: every tab's conversation numbers its masks from 0, so names repeat across tabs.
        out_dir = tempfile.mkdtemp(prefix="conversation_", dir=vis_save_path)
        paths = save_masks(session.image, masks, out_dir, "image", turn.first_mask_index)
        shown: np.ndarray = session.image
        for k, mask in enumerate(masks, start=turn.first_mask_index):
            shown = overlay(shown, mask, mask_colour(k))
        note = mask_note(len(masks), turn.answer.scores, turn.first_mask_index)
        history = history + [
            {"role": "user", "content": prompt.strip()},
            {"role": "assistant", "content": turn.answer.text + note},
        ]
        files = [path for pair in paths for path in pair]
        return conversation, history, shown, None, files or None, ""

    def ask_video(
        video_path: str | None, prompt: str, conversation: Conversation | None, history: list[dict]
    ) -> tuple[Conversation, list[dict], None, str, list[str] | None, str]:
        if video_path is None:
            raise user_error("No video: please upload a video first.")
        if not prompt or not prompt.strip():
            raise user_error("Empty prompt: please type a question.")
        shown_name = os.path.basename(video_path)

        def unreadable(error: Exception) -> gr.Error:
            # Named as uploaded, not by its path on the server.
            return user_error(f"Cannot read the uploaded video: {str(error).replace(video_path, shown_name)}")

        # Before the question: a model that cannot be loaded leaves the conversation as it was.
        if propagate == "memory":
            try:
                video_model.get()
            except ValueError as error:  # a wrong id, a missing folder, a checkpoint that does not fit
                raise user_error(
                    f"{error}. Restart the demo with another --video_memory, or with --propagate per_frame."
                ) from None
        if conversation is None or conversation.kind != "video" or conversation.path != video_path:
            try:
                reader = VideoReader(video_path)
            except VideoError as error:  # not a video, truncated, no frames, ...
                raise unreadable(error) from None
            session = VideoChatSession(model, processor, max_new_tokens, num_frames, propagate, video_model)
            session.set_video(reader)
            conversation = Conversation(session, video_path)
            conversation.reader = reader
            # A folder per conversation: every tab's conversation numbers its masks from 0, and videos of one
            # name may come from several tabs.
            conversation.out_dir = tempfile.mkdtemp(prefix="conversation_", dir=vis_save_path)
            history = []
        session, reader = conversation.session, conversation.reader
        try:
            turn = session.ask(prompt)
            masks_dir = os.path.join(conversation.out_dir, reader.name)
            folders = save_video_masks(session.masks(turn), reader.frame_names, masks_dir, turn.first_mask_index)
            # One overlay video per answer (its number in the conversation): the page never shows a stale one. WebM
            # (VP8): browsers play it, and Gradio would need ffmpeg to convert anything else.
            overlay_path = os.path.join(conversation.out_dir, f"{reader.name}_answer_{len(session.messages) // 2}.webm")
            frames = overlay_video_frames(reader.read, reader.frame_names, folders, turn.first_mask_index)
            write_video(overlay_path, frames, reader.fps or 25.0)
        except VideoError as error:  # a frame that cannot be decoded
            raise unreadable(error) from None
        except ValueError as error:  # e.g. a prompt that was only the image placeholder
            raise user_error(str(error)) from None
        count = len(turn.answer.answer.masks)
        files = [zip_masks(conversation.out_dir, folders, turn.first_mask_index)] if folders else None
        note = mask_note(count, turn.answer.answer.scores, turn.first_mask_index)
        history = history + [
            {"role": "user", "content": prompt.strip()},
            {"role": "assistant", "content": turn.answer.text + note},
        ]
        return conversation, history, None, overlay_path, files, ""

    with gr.Blocks(title="LISA: reasoning segmentation") as demo:
        gr.Markdown(
            "# LISA: reasoning segmentation\n"
            "Upload an image or a video and ask about it; every `[SEG]` in the answer becomes a mask, overlaid in its "
            "own colour. Follow-up questions continue the conversation; a new image or video, or **Clear**, starts over."
        )
        # Per browser tab. gr.State deep-copies only its initial value (None): the model inside a
        # Conversation is shared, never copied.
        conversation = gr.State(None)
        source = gr.State("image")  # the tab shown: what the question is about
        with gr.Row():
            with gr.Column():
                with gr.Tabs():
                    with gr.Tab("Image", id="image", elem_id="image_tab") as image_tab:
                        image_in = gr.Image(type="filepath", label="Image", sources=["upload"], elem_id="image_in")
                    with gr.Tab("Video", id="video", elem_id="video_tab") as video_tab:
                        # include_audio: kept as uploaded (dropping the audio would need ffmpeg).
                        video_in = gr.Video(label="Video", sources=["upload"], include_audio=True, elem_id="video_in")
                prompt = gr.Textbox(label="Question", placeholder="Ask about the image or video ...", elem_id="prompt")
                with gr.Row():
                    submit = gr.Button("Submit", variant="primary", elem_id="submit")
                    clear = gr.Button("Clear", elem_id="clear")
                gr.Examples(EXAMPLES, inputs=[prompt], label="Example questions")
            with gr.Column():
                chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", height=420)
                image_out = gr.Image(label="Masks of the last answer", interactive=False, elem_id="image_out")
                video_out = gr.Video(label="Masks of the last answer, on every frame", interactive=False,
                                     elem_id="video_out")
                files = gr.File(label="Mask files", file_count="multiple", interactive=False, elem_id="files")

        image_tab.select(lambda: "image", None, source, queue=False)
        video_tab.select(lambda: "video", None, source, queue=False)
        inputs = [source, image_in, video_in, prompt, conversation, chatbot]
        outputs = [conversation, chatbot, image_out, video_out, files, prompt]
        submit.click(ask, inputs, outputs)
        prompt.submit(ask, inputs, outputs)
        clear.click(
            lambda: (None, None, None, [], None, None, None, ""), None,
            [conversation, image_in, video_in, chatbot, image_out, video_out, files, prompt], queue=False,
        )
    # One request at a time: they all share one model (and, on a GPU, its memory).
    return demo.queue(default_concurrency_limit=1)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model, processor = load_model(args)
    vis_save_path = args.vis_save_path or tempfile.mkdtemp(prefix="lisa_demo_")
    os.makedirs(vis_save_path, exist_ok=True)
    if args.propagate == "memory" and model.sam_family.video_model_class is None:
        raise SystemExit("--propagate memory: this model's mask head has no video model; use --propagate per_frame")
    demo = build_demo(model, processor, args.max_new_tokens, vis_save_path, args.num_frames, args.propagate,
                      args.video_memory)
    # quiet: Gradio's start-up lines end with "To create a public link, set `share=True`", a setting this script
    # does not offer; the address is printed here instead.
    demo.launch(
        server_name=args.host, server_port=args.port, share=False, show_error=True, allowed_paths=[vis_save_path],
        quiet=True, prevent_thread_lock=True,
    )
    print(f"Serving on {demo.local_url}", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
