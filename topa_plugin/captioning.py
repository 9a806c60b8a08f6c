"""The authors' zero-shot captioning protocol (their MSR-VTT and VATEX notebooks), as data plus one decoder.

It differs from the training layout on purpose, because that is how the paper's CIDEr numbers
were produced::

    <s> + tokens("Instruction: {instruction}\\nVideo:") + video slots + tokens(rest)

``rest`` (e.g. "\\nQuestion: Can you describe this video?\\nAnswer: It is a video of") is
tokenised as one piece right after the video, with no separate newline token, so a Llama-2
sentencepiece tokenizer gives "▁", "<0x0A>", "Question" where training has "<0x0A>", "▁Question".
The answer prefix ending ``rest`` is forced; decoding is greedy for exactly ``max_new_tokens``
steps, never stopping at </s>; the logits of the suppressed words' tokens are set to -100 at
every step (MSR-VTT: " how" and " How", Llama-2 ids 920 and 1128). The caption is the decoded
text after the answer prefix, up to the first ".".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPRESSED_LOGIT = -100.0  # the notebooks' value (not -inf)


@dataclass(frozen=True)
class CaptionProtocol:
    """One notebook's settings: prompt text, forced prefix, steps, memory, suppressed words."""

    instruction: str
    rest: str  # ends with the forced answer prefix
    answer_prefix: str
    max_new_tokens: int
    use_memory: bool
    suppressed_words: tuple[str, ...] = ()


PROTOCOLS = {
    # demos/Eval_Cap_MSRVTT.ipynb: 10 tokens, memory projection on, " how"/" How" suppressed.
    "msrvtt": CaptionProtocol(
        instruction="Predict the answer based on the video and question.",
        rest="\nQuestion: Can you describe this video?\nAnswer: It is a video of",
        answer_prefix="It is a video of",
        max_new_tokens=10,
        use_memory=True,
        suppressed_words=("how", "How"),
    ),
    # demos/Eval_Cap_VATEX.ipynb: 15 tokens, raw CLIP features (no memory), nothing suppressed.
    "vatex": CaptionProtocol(
        instruction="Generate a dense description for the video.",
        rest="\nVideo Caption: The video shows",
        answer_prefix="The video shows",
        max_new_tokens=15,
        use_memory=False,
    ),
}


def get_protocol(name: str) -> CaptionProtocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown caption protocol {name!r}; use one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def word_start_id(processor, word: str) -> int:
    """The single token that starts ``word`` after a space (Llama-2: "how" -> 920 "▁how",
    "How" -> 1128 "▁How"); an error when the tokenizer splits the word."""
    ids = processor.encode_text(f" {word}")
    if not ids or processor.tokenizer.decode([ids[-1]]).strip() != word:
        name = getattr(processor.tokenizer, "name_or_path", type(processor.tokenizer).__name__)
        raise ValueError(f"tokenizer {name!r} has no single token for the word {word!r} (got ids {ids}); "
                         "the release protocol suppresses that word's token")
    return ids[-1]


@dataclass(frozen=True)
class CaptionPrompt:
    input_ids: list[int]
    video_start: int
    suppressed_ids: tuple[int, ...]


def encode_caption_prompt(processor, protocol: CaptionProtocol) -> CaptionPrompt:
    """Token ids of the release captioning prompt (video slots hold the placeholder id)."""
    bos = [] if processor.bos_id is None else [processor.bos_id]  # families without BOS (Qwen) start at "Instruction"
    head = [*bos, *processor.encode_text(f"Instruction: {protocol.instruction}\nVideo:")]
    ids = head + [processor.placeholder_id] * processor.max_feats + processor.encode_text(protocol.rest)
    suppressed = tuple(word_start_id(processor, w) for w in protocol.suppressed_words)
    return CaptionPrompt(ids, len(head), suppressed)


@torch.no_grad()
def decode_release(model, prompt: CaptionPrompt, video: torch.Tensor, steps: int) -> list[int]:
    """``steps`` greedy token ids after the prompt (KV-cached; </s> does not stop it)."""
    device = model.llm.device
    ids = torch.tensor([prompt.input_ids], device=device)
    out = model(ids, video, prompt.video_start, use_cache=True, logits_to_keep=1)
    generated: list[int] = []
    for _ in range(steps):
        logits = out.logits[0, -1].float().clone()
        if prompt.suppressed_ids:
            logits[list(prompt.suppressed_ids)] = SUPPRESSED_LOGIT
        token = int(logits.argmax())
        generated.append(token)
        step = torch.tensor([[token]], device=device)
        out = model(step, video_start=prompt.video_start, past_key_values=out.cache, use_cache=True)
    return generated


def caption_text(processor, protocol: CaptionProtocol, generated: list[int]) -> str:
    """The notebooks' post-processing: text after the forced prefix, up to the first "."."""
    text = processor.decode(processor.encode_text(protocol.rest) + generated)
    if protocol.answer_prefix not in text:
        raise ValueError(f"the tokenizer does not decode the caption prompt back to its prefix "
                         f"{protocol.answer_prefix!r} (got {text!r})")
    return text.split(protocol.answer_prefix)[1].strip().split(".")[0]


def caption_video(model, video_features, protocol: str | CaptionProtocol = "msrvtt",
                  max_new_tokens: int | None = None, use_memory: bool | None = None) -> str:
    """Caption one video with the authors' zero-shot captioning protocol (their notebooks).

    Args:
        model: a ``TopaForCausalLM`` with its processor.
        video_features: raw per-frame CLIP features [T, F].
        protocol: ``"msrvtt"`` (10 tokens, with memory), ``"vatex"`` (15 tokens, no memory) or a
            ``CaptionProtocol``.
        max_new_tokens: override the protocol's fixed length.
        use_memory: override the protocol's memory setting.
    """
    protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
    processor = model._require_processor()
    prompt = encode_caption_prompt(processor, protocol)
    memory = protocol.use_memory if use_memory is None else use_memory
    steps = protocol.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
    with model.adapter.reuse_prompt_projections():
        video = model.prepare_video(video_features, memory)[None]
        generated = decode_release(model, prompt, video, steps)
    return caption_text(processor, protocol, generated)
