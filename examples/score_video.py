"""Answer one multiple-choice question about a video file with a TOPA checkpoint, from Python.

The same as `topa ask VIDEO --checkpoint DIR --question ... --option ...` (and as `lmms-eval --model
topa`): the video's CLIP frame features are projected onto the checkpoint's memory of text features,
and each choice gets the mean NLL of its answer; the lowest wins. With real weights (a directory from
`topa convert-official`, see README.md):

    python examples/score_video.py --checkpoint topa-13b --video clip.mp4 \
        --question "What is c doing in the kitchen?" \
        --choices "c cooks" "c cleans" "c reads" "c sleeps" "c paints"

`--clip-pretrained openai` (the default) downloads the ViT-L-14 weights TOPA was trained
with on first use; offline, pass the path of a local open_clip weights file instead (and a
model-config JSON as --clip-model for a model open_clip does not know by name).
"""

import argparse

from topa_plugin import Asker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="TOPA plugin directory")
    parser.add_argument("--video", required=True, help="video file (mp4, mkv, ...)")
    parser.add_argument("--question", required=True)
    parser.add_argument("--choices", nargs="+", required=True, help="two or more answer texts")
    parser.add_argument("--clip-model", default="ViT-L-14", help="open_clip model name or model-config JSON")
    parser.add_argument("--clip-pretrained", default="openai", help="open_clip weights tag or local weights file")
    parser.add_argument("--frames", type=int, default=None, help="frames sampled uniformly (default: the checkpoint's max_feats)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = parser.parse_args()

    asker = Asker.from_pretrained(args.checkpoint, clip_model=args.clip_model, clip_pretrained=args.clip_pretrained,
                                  frames=args.frames, device=args.device)
    answer = asker.ask(args.video, args.question, args.choices)  # an Answer: scores, frames, prompt, ...

    print(f"{len(answer.frames)} frames from {args.video}")
    print(f"Question: {args.question}")
    for i, (choice, loss) in enumerate(zip(answer.options, answer.scores)):
        print(f"  ({chr(ord('A') + i)}) NLL {loss:.4f}  {choice}")
    print(f"Prediction: ({chr(ord('A') + answer.answer_index)}) {answer.answer}")


if __name__ == "__main__":
    main()
