"""Chat with a LISA model about an image; every [SEG] of an answer is saved as a mask.

Interactive (multi-turn):
    python chat.py --version DIR
asks for a prompt, then an image path. Pressing Enter at the image prompt keeps the current image and
continues the conversation; a path starts a new conversation on that image. `exit` or end of input quits.

One-shot (scriptable):
    python chat.py --version DIR --image PATH --prompt "Where can the driver see the speed? Please output segmentation mask."
    python chat.py --version DIR --video clip.mp4 --prompt "Which player scores? Please output segmentation mask."

A video (an .mp4/.avi/.webm/.mov/.mkv file or a folder of frames; in the interactive loop, give its path where an image
path is asked for): --num_frames frames spread over the whole video are shown to the model, each [SEG] of the answer
becomes a mask on every frame (--propagate: memory, SAM 2's or the SAM 3 tracker's memory modules carrying the key
frames' masks through the video, read from --video_memory; per_frame: the [SEG] decoded on each frame), written as
{vis_save_path}/{stem}/{k}/{frame}.png, with {vis_save_path}/{stem}/overlay_{first k}.mp4 showing the video with the
answer's masks overlaid.

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

from model.cli import add_model_arguments, add_video_arguments, load_model
from model.session import ChatSession, VideoChatSession
from model.video import LazyVideoModel
from utils.cli import HelpFormatter
from utils.images import ImageError, load_image
from utils.video import VideoError, VideoReader, is_video, write_video
from utils.vis import FileStems, overlay_video_frames, save_masks, save_video_masks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--vis_save_path", default="./vis_output", help="folder for the mask and overlay PNGs")
    parser.add_argument("--image", help="one-shot: the image to ask about (with --prompt)")
    parser.add_argument("--video", help="one-shot: the video (file or folder of frames) to ask about (with --prompt)")
    parser.add_argument("--prompt", help="one-shot: the question (with --image or --video)")
    add_video_arguments(parser)
    args = parser.parse_args(argv)
    if args.image is not None and args.video is not None:
        parser.error("--image and --video: ask about one of them")
    if ((args.image or args.video) is None) != (args.prompt is None):
        parser.error("--image (or --video) and --prompt go together (one-shot); give neither for the interactive loop")
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


def respond_video(session: VideoChatSession, video: VideoReader, prompt: str, stem: str, vis_save_path: str) -> None:
    """Answers one prompt about a video, prints the answer, writes every frame's masks and the overlay video."""
    turn = session.ask(prompt)
    print(f"Answer: {turn.answer.text} (key frames {turn.answer.key_frames})")
    if not turn.answer.answer.masks:
        print("(no [SEG] in the answer: no mask)")
        return
    out_dir = os.path.join(vis_save_path, stem)
    folders = save_video_masks(session.masks(turn), video.frame_names, out_dir, turn.first_mask_index)
    for folder, score in zip(folders, turn.answer.answer.scores):
        print(f"Saved masks: {folder}/ ({len(video)} frames; predicted IoU on the key frames {score:.3f})")
    path = os.path.join(out_dir, f"overlay_{turn.first_mask_index}.mp4")
    write_video(path, overlay_video_frames(video.read, video.frame_names, folders, turn.first_mask_index), video.fps or 10.0)
    print(f"Saved overlay video: {path}")


def read(prompt: str) -> str | None:
    """A line typed by the user, stripped; None at end of input or on `exit`."""
    try:
        line = input(prompt).strip()
    except EOFError:
        print()  # end the pending prompt line
        return None
    return None if line == "exit" else line


def interact(session: ChatSession, videos: VideoChatSession, vis_save_path: str) -> None:
    stems, stem, video = FileStems(), None, None
    while True:
        prompt = read("Please input your prompt: ")
        if prompt is None:
            return
        if not prompt:
            print("Empty prompt: please type a question.")
            continue
        path = read("Please input the image or video path (Enter: keep the current one): ")
        if path is None:
            return
        if path:
            try:
                if is_video(path):
                    video = VideoReader(path)
                    videos.set_video(video)
                else:
                    session.set_image(load_image(path))
                    video = None
            except (ImageError, VideoError) as error:
                print(error)
                continue
            stem = stems(path)
        elif session.image is None and video is None:
            print("No image yet: please give an image or video path.")
            continue
        try:
            if video is not None:
                respond_video(videos, video, prompt, stem, vis_save_path)
            else:
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
            source = VideoReader(args.video) if args.video else load_image(args.image)
        except (ImageError, VideoError) as error:
            sys.exit(str(error))
    model, processor = load_model(args)
    session = ChatSession(model, processor, args.max_new_tokens)
    videos = VideoChatSession(model, processor, args.max_new_tokens, num_frames=args.num_frames,
                              propagate=args.propagate, video_model=LazyVideoModel(model, args.video_memory))
    if args.prompt is None:
        interact(session, videos, args.vis_save_path)
        return
    stem = os.path.splitext(os.path.basename(os.path.normpath(args.video or args.image)))[0]
    try:
        if args.video:
            videos.set_video(source)
            respond_video(videos, source, args.prompt, stem, args.vis_save_path)
        else:
            session.set_image(source)
            respond(session, args.prompt, stem, args.vis_save_path)
    except ValueError as error:
        sys.exit(str(error))


if __name__ == "__main__":
    main()
