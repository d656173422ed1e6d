"""Chat with a LISA model about an image; every [SEG] of an answer is saved as a mask.

Interactive (multi-turn):
    python chat.py --version DIR
asks for a prompt, then an image path. Pressing Enter at the image prompt keeps the current image and
continues the conversation; a path starts a new conversation on that image. `exit` or end of input quits.

One-shot (scriptable):
    python chat.py --version DIR --image PATH --prompt "Where can the driver see the speed? Please output segmentation mask."

For the [SEG] number k of a conversation, writes {vis_save_path}/{stem}_mask_{k}.png (0/255, image size) and
{stem}_masked_img_{k}.png (the image with that mask overlaid) and prints their paths, with the mask decoder's
predicted IoU of the mask (its own confidence). {stem} is the image's file name without extension; another image
of the same name in the same session gets {stem}_2, {stem}_3, ...

On a GPU with little memory, --load_in_4bit (or --load_in_8bit) quantises the language model (bitsandbytes; also
runs on the CPU); the image encoder, the mask head and the [SEG] projection stay in --precision.
"""

from __future__ import annotations

import argparse
import os
import sys

from model.cli import add_model_arguments, load_model
from model.session import ChatSession
from utils.cli import HelpFormatter
from utils.images import ImageError, load_image
from utils.vis import FileStems, save_masks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--vis_save_path", default="./vis_output", help="folder for the mask and overlay PNGs")
    parser.add_argument("--image", help="one-shot: the image to ask about (with --prompt)")
    parser.add_argument("--prompt", help="one-shot: the question (with --image)")
    args = parser.parse_args(argv)
    if (args.image is None) != (args.prompt is None):
        parser.error("--image and --prompt go together (one-shot); give neither for the interactive loop")
    return args


def respond(session: ChatSession, prompt: str, stem: str, vis_save_path: str) -> None:
    """Answers one prompt, prints the answer and the paths of the masks it wrote."""
    turn = session.ask(prompt)
    print(f"Answer: {turn.answer.text}")
    masks = [m.numpy() for m in turn.answer.masks]
    paths = save_masks(session.image, masks, vis_save_path, stem, turn.first_mask_index)
    for (mask_path, overlay_path), score in zip(paths, turn.answer.scores):
        print(f"Saved mask: {mask_path} (predicted IoU {score:.3f})\nSaved overlay: {overlay_path}")
    if not masks:
        print("(no [SEG] in the answer: no mask)")


def read(prompt: str) -> str | None:
    """A line typed by the user, stripped; None at end of input or on `exit`."""
    try:
        line = input(prompt).strip()
    except EOFError:
        print()  # end the pending prompt line
        return None
    return None if line == "exit" else line


def interact(session: ChatSession, vis_save_path: str) -> None:
    stems, stem = FileStems(), None
    while True:
        prompt = read("Please input your prompt: ")
        if prompt is None:
            return
        if not prompt:
            print("Empty prompt: please type a question.")
            continue
        path = read("Please input the image path (Enter: keep the current image): ")
        if path is None:
            return
        if path:
            try:
                session.set_image(load_image(path))
            except ImageError as error:
                print(error)
                continue
            stem = stems(path)
        elif session.image is None:
            print("No image yet: please give an image path.")
            continue
        try:
            respond(session, prompt, stem, vis_save_path)
        except ValueError as error:  # a prompt that is empty once the image placeholder is removed
            print(error)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.prompt is not None:
        # Check the one-shot input before the (slow) model load.
        if not args.prompt.strip():
            sys.exit("Empty prompt: please give a question with --prompt.")
        try:
            image = load_image(args.image)
        except ImageError as error:
            sys.exit(str(error))
    model, processor = load_model(args)
    session = ChatSession(model, processor, args.max_new_tokens)
    if args.prompt is None:
        interact(session, args.vis_save_path)
        return
    session.set_image(image)
    try:
        respond(session, args.prompt, os.path.splitext(os.path.basename(args.image))[0], args.vis_save_path)
    except ValueError as error:
        sys.exit(str(error))


if __name__ == "__main__":
    main()
