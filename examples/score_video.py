"""Answer one multiple-choice question about a video file with a TOPA checkpoint.

TOPA ranks the choices zero-shot: the video's CLIP frame features are projected onto the
checkpoint's memory of text features, and each choice gets the mean NLL of its answer; the
lowest wins. With real weights (a directory from `topa convert-official`, see docs/evaluation.md):

    python examples/score_video.py --checkpoint topa-13b --video clip.mp4 \
        --question "What is c doing in the kitchen?" \
        --choices "c cooks" "c cleans" "c reads" "c sleeps" "c paints"

`--clip-pretrained openai` (the default) downloads the ViT-L-14 weights TOPA was trained
with on first use; offline, pass the path of a local open_clip weights file instead (and a
model-config JSON as --clip-model for a model open_clip does not know by name).
"""

import argparse

import torch

from topa_plugin import TopaForCausalLM, load_clip, read_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="TOPA plugin directory")
    parser.add_argument("--video", required=True, help="video file (mp4, mkv, ...)")
    parser.add_argument("--question", required=True)
    parser.add_argument("--choices", nargs="+", required=True, help="two or more answer texts")
    parser.add_argument("--clip-model", default="ViT-L-14", help="open_clip model name or model-config JSON")
    parser.add_argument("--clip-pretrained", default="openai", help="open_clip weights tag or local weights file")
    parser.add_argument("--frames", type=int, default=10, help="frames sampled uniformly from the video")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    frames = read_frames(args.video, args.frames)  # first: a bad video fails before any model loads
    model = TopaForCausalLM.from_pretrained(args.checkpoint, device=args.device)
    encoder = load_clip(args.clip_model, args.clip_pretrained, device=args.device)
    features = encoder.encode_images(frames)  # [frames, D]; score_choices normalises and projects
    nll = model.score_choices(features, args.question, args.choices)

    print(f"{len(frames)} frames from {args.video}")
    print(f"Question: {args.question}")
    for i, (choice, loss) in enumerate(zip(args.choices, nll.tolist())):
        print(f"  ({chr(ord('A') + i)}) NLL {loss:.4f}  {choice}")
    best = int(nll.argmin())
    print(f"Prediction: ({chr(ord('A') + best)}) {args.choices[best]}")


if __name__ == "__main__":
    main()
