"""`topa ask VIDEO`: question a checkpoint about one video; the answer, each option's score, and an explanation page."""

from __future__ import annotations

import json

from topa_plugin.commands import fail, positive_int

COMMAND = "ask"
# Flags passed on to Asker.from_pretrained when given (its defaults apply otherwise, so they live in one place).
LOAD_SETTINGS = ("clip_model", "clip_pretrained", "memory", "frames", "device", "dtype", "neighbors")


def add_model_flags(p) -> None:
    """The flags that say which checkpoint, CLIP and memory an ``Asker`` loads (``topa ask``, ``topa serve``)."""
    from topa_plugin.quantization import add_quantization_flags

    p.add_argument("--checkpoint", required=True, help="TOPA plugin directory")
    p.add_argument("--clip-model", default=None, help="open_clip model name or model-config JSON (default ViT-L-14)")
    p.add_argument("--clip-pretrained", default=None, help="open_clip weights tag or local weights file (default openai)")
    p.add_argument("--memory", default=None, help="memory-bank file (default: the checkpoint's)")
    p.add_argument("--frames", type=positive_int, default=None, help="frames decoded per video (default: max_feats)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default=None, help="LLM dtype: auto (default), float32, bfloat16, float16")
    p.add_argument("--neighbors", type=positive_int, default=None, help="nearest memory rows shown per frame (default 3)")
    add_quantization_flags(p)


def load_asker(args):
    """The ``Asker`` that ``add_model_flags``' flags describe."""
    from topa_plugin.ask import Asker
    from topa_plugin.quantization import settings_from_args

    settings = {name: getattr(args, name) for name in LOAD_SETTINGS if getattr(args, name) is not None}
    return Asker.from_pretrained(args.checkpoint, quantization=settings_from_args(args), **settings)


def _print_answer(answer) -> None:
    """The answer, then for options a small table of scores (mean NLL, lower is better)."""
    if answer.answer_index is None:
        print(f"Answer (generated): {answer.answer}")
        return
    print(f"Answer: {answer.label}. {answer.answer}")
    width = max(len(text) for text in answer.options)
    print(f"  {'':3} {'option':<{width}}  mean NLL")
    for i, (text, score) in enumerate(zip(answer.options, answer.scores)):
        mark = "*" if i == answer.answer_index else " "
        correct = "  (correct)" if i == answer.correct_index else ""
        print(f"{mark} {chr(ord('A') + i)}.  {text:<{width}}  {score:8.4f}{correct}")


def run(args) -> int:
    from topa_plugin.ask import AskError, check_question, check_video

    if len(args.option) == 1:
        fail(COMMAND, f"--option given once ({args.option[0]!r}); give two or more options, or none to generate an answer")
    try:
        check_question(args.question, args.option, args.answer)  # the quick checks first, before any model loads
        check_video(args.video)
        if args.report is not None:
            from topa_plugin.pages.render import check_page_path

            check_page_path(args.report)
        answer = load_asker(args).ask(args.video, args.question, args.option, answer=args.answer)
    except AskError as err:
        fail(COMMAND, str(err))
    if args.json:
        print(json.dumps(answer.to_json(), ensure_ascii=False))
    else:
        _print_answer(answer)
    if args.report is not None:
        from topa_plugin.pages.explanation import write_explanation

        path = write_explanation(answer, args.report)
        if not args.json:
            print(f"explanation: {path}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("ask", help="ask a checkpoint one question about one video (as lmms-eval --model topa)",
                              description="Answer a question about a video file (or a .npy of frame features) with a "
                                          "TOPA checkpoint, exactly as `lmms-eval --model topa` answers it.")
    p.add_argument("video", help="video file (mp4, mkv, ...) or .npy of CLIP frame features [T, D]")
    p.add_argument("--question", required=True, help="the question (it may list its options, one 'A. ...' per line)")
    p.add_argument("--option", action="append", default=[], help="an answer option (repeat; none: free generation)")
    p.add_argument("--answer", default=None, help="the correct option, as a label (B) or 0-based index: marked on the page")
    add_model_flags(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--report", default=None, metavar="FILE.html", help="write the explanation page here")
    p.set_defaults(func=run)
