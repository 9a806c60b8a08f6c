"""Fixture builders for the lmms-eval tests and benchmark: a tiny TOPA checkpoint, real mp4
files and EgoSchema-shaped rows, all written to disk and read back through the public paths."""

from __future__ import annotations

import json
from pathlib import Path

import torch

FEATURE_DIM = 768  # the toy CLIP's embed dim, as ViT-L-14's
MAX_FEATS = 10

# (question, five options, answer): EgoSchema's shape, the camera wearer called "c".
ROWS = [
    ("What is the main activity c performs throughout the video?",
     ["c cooks a meal", "c cleans the kitchen", "c repairs a bicycle", "c paints a wall", "c plays with a dog"], 1),
    ("How does c interact with the objects on the table?",
     ["c sorts them by colour", "c throws them away", "c washes each one", "c stacks them carefully", "c ignores them"], 3),
    ("what is the overarching goal of c's actions",
     ["to organise the room", "to prepare food", "to fix the tap", "to water the plants", "to pack a bag"], 0),
    ("Which tool does c use most often?",
     ["a knife", "a hammer", "a brush", "a spoon", "a pair of scissors"], 2),
]
# Frame counts per video: 5 < MAX_FEATS exercises zero padding, the others uniform sampling.
VIDEO_FRAMES = [24, 30, 5, 16]


def video_id(i: int) -> str:
    return f"{i:08d}-e9a2-4c6b-9d1f-topa{i:04d}"


def build_topa_checkpoint(out_dir: str | Path, llama_dir: str | Path, *, seed: int = 0, memory_rows: int = 64,
                          feature_dim: int = FEATURE_DIM) -> Path:
    """Save a self-contained TOPA plugin directory over the toy Llama with random, non-zero
    adapter weights and gates and a random memory bank."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from topa_plugin.configuration import TopaConfig
    from topa_plugin.demo.toy import fan_in_rescale
    from topa_plugin.modeling import TopaForCausalLM
    from topa_plugin.processing import TopaProcessor

    llm = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    fan_in_rescale(llm, generator)  # otherwise gates, video and question barely move the logits
    config = TopaConfig(text_config=llm.config.to_dict(), feature_dim=feature_dim, max_feats=MAX_FEATS, adapter_len=4)
    model = TopaForCausalLM(config, llm=llm)
    with torch.no_grad():
        for param in model.adapter.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
    model.memory = torch.nn.functional.normalize(torch.randn(memory_rows, feature_dim, generator=generator), dim=-1)
    model.processor = TopaProcessor(AutoTokenizer.from_pretrained(llama_dir), max_feats=MAX_FEATS)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, save_base=True)
    return out_dir


# Enough "how"/"How" for the toy BPE to give each word one piece, as Llama-2 does ("▁how" 920,
# "▁How" 1128): the authors' MSR-VTT captioning protocol suppresses those two tokens.
CAPTION_TEXT = tuple(["how How it is a video of how to cook. Can you describe this video? "
                      "Generate a dense description for the video. Video Caption: The video shows how"] * 40)


def build_caption_checkpoint(root: str | Path) -> Path:
    """A TOPA plugin directory (``root/checkpoint``) whose toy tokenizer (``root/tokenizer``)
    has single tokens for the words the captioning protocol suppresses."""
    from topa_plugin.demo import toy

    root = Path(root)
    toy.train_toy_tokenizer(root / "tokenizer", extra_text=CAPTION_TEXT)
    llama = toy.build_toy_llama(root / "llama", root / "tokenizer")
    return build_topa_checkpoint(root / "checkpoint", llama)


def write_egoschema_fixture(root: str | Path) -> tuple[Path, Path]:
    """Write ``root/videos/<video_idx>.mp4`` and ``root/rows.jsonl`` (EgoSchema-shaped, without
    video paths); returns (rows file, video folder)."""
    from topa_plugin.demo.toy import write_toy_video

    root = Path(root)
    videos = root / "videos"
    rows = []
    for i, ((question, options, answer), n_frames) in enumerate(zip(ROWS, VIDEO_FRAMES)):
        write_toy_video(videos / f"{video_id(i)}.mp4", n_frames=n_frames, seed=100 + i)
        rows.append({
            "question_idx": str(i),
            "video_idx": video_id(i),
            "question": question,
            "option": [f"{chr(ord('A') + j)}. {text}" for j, text in enumerate(options)],
            "answer": answer,
        })
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return data, videos


def write_zero_frame_video(path: str | Path) -> Path:
    """A valid mp4 container whose video stream holds no frames."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        container.start_encoding()  # writes the header; without it no file appears
    return path


def write_garbage_video(path: str | Path) -> Path:
    """A file named .mp4 that no decoder can read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an mp4 file" * 64)
    return path


def expected_predictions(checkpoint: Path, clip_config: Path, clip_weights: Path, data: Path, videos: Path,
                         quantization: str | None = None) -> list[int]:
    """Option index per row by ``score_choices`` on frames decoded and encoded here, outside lmms-eval
    (with the LLM loaded in ``quantization``)."""
    from topa_plugin.features.clip import load_clip
    from topa_plugin.features.transforms import l2_normalize
    from topa_plugin.features.video import read_frames
    from topa_plugin.modeling import TopaForCausalLM

    model = TopaForCausalLM.from_pretrained(checkpoint, quantization=quantization)
    encoder = load_clip(str(clip_config), str(clip_weights))
    predictions = []
    for line in data.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        frames = read_frames(videos / f"{row['video_idx']}.mp4", MAX_FEATS)
        features = l2_normalize(encoder.encode_images(frames))
        texts = [option.split(". ", 1)[1] for option in row["option"]]
        predictions.append(int(model.score_choices(features, row["question"], texts).argmin()))
    return predictions


# EgoSchema-style lettered options, and a prompt as lmms-eval's EgoSchema task shows them.
OPTIONS = ["A. c cooks a meal", "B. c cleans the kitchen", "C. c repairs a bicycle", "D. c paints a wall", "E. c plays"]


def shown(question, options):
    """A prompt as lmms-eval's EgoSchema task writes it: question, lettered options, instruction."""
    return question + "\n" + "\n".join(options) + "\nAnswer with the option's letter from the given choices directly."
