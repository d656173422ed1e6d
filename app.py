"""A web demo of a LISA model (Gradio): upload an image, ask a question, get the answer and its masks.

    python app.py --version DIR [--host 127.0.0.1 --port 7860] [--load_in_4bit]

then open http://127.0.0.1:7860. Every [SEG] of an answer is overlaid on the image in its own colour and
its mask is offered as a PNG (0/255) beside the overlay; the answer shows the mask decoder's predicted IoU of
each mask. Follow-up questions continue the conversation on the same image; uploading another image or pressing
"Clear" starts a new one. Requests are queued and run one at a time on the one model. The answering path is
`chat.py`'s (`model.session.ChatSession`).
"""

from __future__ import annotations

import argparse
import os
import tempfile

# Before gradio is imported: no telemetry and no version check against api.gradio.app (the demo must start
# and run on machines without internet).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from model.cli import add_model_arguments, load_model  # noqa: E402
from model.lisa import LisaForCausalLM  # noqa: E402
from model.processing import LisaProcessor  # noqa: E402
from model.session import ChatSession  # noqa: E402
from utils.cli import HelpFormatter  # noqa: E402
from utils.images import ImageError, load_image  # noqa: E402
from utils.vis import mask_colour, overlay, save_masks  # noqa: E402

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
    parser.add_argument("--vis_save_path", help="folder for the mask and overlay PNGs (default: a new temporary folder)")
    return parser.parse_args(argv)


class Conversation:
    """One browser tab's conversation: a `ChatSession` on the shared model plus the image file it is about."""

    def __init__(self, model: LisaForCausalLM, processor: LisaProcessor, max_new_tokens: int):
        self.session = ChatSession(model, processor, max_new_tokens)
        self.image_path: str | None = None


def user_error(message: str) -> gr.Error:
    """A message for the page about a bad request (no traceback in the server log: nothing went wrong there)."""
    return gr.Error(message, print_exception=False)


def build_demo(model: LisaForCausalLM, processor: LisaProcessor, max_new_tokens: int, vis_save_path: str) -> gr.Blocks:
    def ask(
        image_path: str | None, prompt: str, conversation: Conversation | None, history: list[dict]
    ) -> tuple[Conversation, list[dict], np.ndarray, list[str] | None, str]:
        """One question: (conversation, chat shown, overlay of the answer's masks, PNG paths, emptied prompt)."""
        # Checked here rather than by ChatSession so that a bad request does not end the conversation.
        if image_path is None:
            raise user_error("No image: please upload an image first.")
        if not prompt or not prompt.strip():
            raise user_error("Empty prompt: please type a question.")
        if conversation is None or conversation.image_path != image_path:
            try:
                image = load_image(image_path)
            except ImageError as error:  # not an image, truncated, ...
                # Named as uploaded, not by its path on the server.
                message = str(error).replace(image_path, os.path.basename(image_path))
                raise user_error(f"Cannot read the uploaded image: {message}") from None
            conversation = Conversation(model, processor, max_new_tokens)
            conversation.session.set_image(image)
            conversation.image_path, history = image_path, []
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
        scores = ", ".join(f"mask {k}: {score:.2f}" for k, score in enumerate(turn.answer.scores, start=turn.first_mask_index))
        note = (f"\n\n({len(masks)} mask{'s' * (len(masks) != 1)})\npredicted IoU: {scores}" if masks
                else "\n\n(no [SEG] in the answer: no mask)")
        history = history + [
            {"role": "user", "content": prompt.strip()},
            {"role": "assistant", "content": turn.answer.text + note},
        ]
        files = [path for pair in paths for path in pair]
        return conversation, history, shown, files or None, ""

    with gr.Blocks(title="LISA: reasoning segmentation") as demo:
        gr.Markdown(
            "# LISA: reasoning segmentation\n"
            "Upload an image and ask about it; every `[SEG]` in the answer becomes a mask, overlaid in its own "
            "colour. Follow-up questions continue the conversation; a new image or **Clear** starts over."
        )
        # Per browser tab. gr.State deep-copies only its initial value (None): the model inside a
        # Conversation is shared, never copied.
        conversation = gr.State(None)
        with gr.Row():
            with gr.Column():
                image_in = gr.Image(type="filepath", label="Image", sources=["upload"], elem_id="image_in")
                prompt = gr.Textbox(label="Question", placeholder="Ask about the image ...", elem_id="prompt")
                with gr.Row():
                    submit = gr.Button("Submit", variant="primary", elem_id="submit")
                    clear = gr.Button("Clear", elem_id="clear")
                gr.Examples(EXAMPLES, inputs=[prompt], label="Example questions")
            with gr.Column():
                chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", height=420)
                image_out = gr.Image(label="Masks of the last answer", interactive=False, elem_id="image_out")
                files = gr.File(label="Mask and overlay PNGs", file_count="multiple", interactive=False, elem_id="files")

        inputs = [image_in, prompt, conversation, chatbot]
        outputs = [conversation, chatbot, image_out, files, prompt]
        submit.click(ask, inputs, outputs)
        prompt.submit(ask, inputs, outputs)
        clear.click(lambda: (None, None, [], None, None, ""), None, [conversation, image_in, chatbot, image_out, files, prompt], queue=False)
    # One request at a time: they all share one model (and, on a GPU, its memory).
    return demo.queue(default_concurrency_limit=1)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model, processor = load_model(args)
    vis_save_path = args.vis_save_path or tempfile.mkdtemp(prefix="lisa_demo_")
    os.makedirs(vis_save_path, exist_ok=True)
    demo = build_demo(model, processor, args.max_new_tokens, vis_save_path)
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
