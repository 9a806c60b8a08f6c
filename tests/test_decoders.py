"""TOPA over every supported decoder family, against the independent float64 oracle of tests/helpers.

Each family's tiny random model keeps what sets it apart (sliding windows shorter than the
prompts, q/k norms, fused projections, soft-capping, Llama-3.1 rope scaling); see
tests/helpers/decoder_zoo.py. Every family also runs with its LLM in 8-bit and 4-bit (bitsandbytes):
the adapter prompts' key/value path goes through the quantized modules.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from tests.helpers.decoder_zoo import FAMILY_CONFIGS, WINDOW, build_toy_decoder
from tests.helpers.quantized import dequantized_view
from tests.helpers.reference_decoders import Oracle, reference_choice_scores
from topa_plugin.configuration import TopaConfig
from topa_plugin.modeling import TopaForCausalLM, load_llm
from topa_plugin.processing import TopaProcessor

FEATURE_DIM = 32
MAX_FEATS = 10
ADAPTER_LAYER = 3  # of 4: the lowest layer runs without adapter
TOLERANCE = 1e-4
QUESTION = ("what did the person do after picking up the knife",
            ["cut the onion", "washed the pan", "opened the fridge", "poured the water", "left the kitchen"])


@pytest.fixture(scope="module", params=sorted(FAMILY_CONFIGS))
def model(request, toy_tokenizer_dir, tmp_path_factory):
    """A TOPA model with random non-trivial trainables over a tiny random decoder of one family."""
    family = request.param
    tokenizer = AutoTokenizer.from_pretrained(toy_tokenizer_dir)
    base = build_toy_decoder(tmp_path_factory.mktemp(f"{family}_base"), family, len(tokenizer))
    llm = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = TopaConfig(
        text_config=llm.config.to_dict(), feature_dim=FEATURE_DIM, max_feats=MAX_FEATS, adapter_len=6,
        adapter_layer=ADAPTER_LAYER,
    )
    model = TopaForCausalLM(config, llm=llm)
    generator = torch.Generator().manual_seed(len(family))
    with torch.no_grad():
        for param in model.adapter.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
        model.adapter.gate2.mul_(2.0).sub_(1.0)
    model.processor = TopaProcessor(tokenizer, max_feats=MAX_FEATS)
    return model.eval()


def oracle(model, **changes) -> Oracle:
    tensors = dict(model.adapter.state_dict(), **changes)
    return Oracle(model.llm, tensors, ADAPTER_LAYER)


def video(model, seed=0):
    features = torch.randn(7, FEATURE_DIM, generator=torch.Generator().manual_seed(seed))
    return model.prepare_video(features)


def test_forward_matches_oracle(model):
    prompt = model.processor.encode_multiple_choice(*QUESTION, answer=2)
    assert len(prompt.input_ids) > WINDOW + MAX_FEATS  # queries past the window, with and without video keys
    frames = video(model)
    with torch.no_grad():
        ours = model(torch.tensor([prompt.input_ids]), frames[None], prompt.video_start).logits[0]
    ref = oracle(model).logits(prompt.input_ids, frames, prompt.video_start)
    assert (ours.double() - ref).abs().max() <= TOLERANCE
    # The comparison is not vacuous: gates and video move the oracle's logits.
    gate2 = model.adapter.gate2 + 1.0
    moved = oracle(model, gate2=gate2).logits(prompt.input_ids, frames, prompt.video_start)
    assert (moved - ref).abs().max() > 0.1
    moved = oracle(model, gate1=model.adapter.gate1 + 1.0).logits(prompt.input_ids, frames, prompt.video_start)
    assert (moved - ref).abs().max() > 0.1


def test_score_choices_matches_full_forwards(model):
    """The cached prefix + batched choices (keys past the sliding window) against full oracle forwards."""
    features = torch.randn(12, FEATURE_DIM, generator=torch.Generator().manual_seed(5))
    ours = model.score_choices(features, *QUESTION, use_memory=False)
    sequences = [model.processor.encode_multiple_choice(*QUESTION, answer=i).input_ids for i in range(5)]
    start = model.processor.encode_multiple_choice(*QUESTION, answer=0).video_start
    assert min(map(len, sequences)) > WINDOW
    ref = reference_choice_scores(oracle(model), sequences, model.prepare_video(features, use_memory=False), start)
    assert (ours.double() - ref).abs().max() <= TOLERANCE


def test_cached_decoding_equals_uncached(model):
    """Step-by-step cached logits equal full forwards, then generate_answer equals an uncached greedy loop."""
    prompt = model.processor.encode_open_ended("what is the dog doing", None)
    assert len(prompt.input_ids) > WINDOW
    frames = video(model, seed=1)[None]
    ids = list(prompt.input_ids)
    with torch.no_grad():
        out = model(torch.tensor([ids]), frames, prompt.video_start, use_cache=True)
        for _ in range(6):
            token = int(out.logits[0, -1].argmax())
            ids.append(token)
            out = model(torch.tensor([[token]]), video_start=prompt.video_start, past_key_values=out.cache, use_cache=True)
            full = model(torch.tensor([ids]), frames, prompt.video_start).logits[0, -1]
            assert (out.logits[0, -1] - full).abs().max() <= TOLERANCE
    features = torch.randn(5, FEATURE_DIM, generator=torch.Generator().manual_seed(2))
    greedy = _uncached_greedy(model, prompt, model.prepare_video(features)[None], steps=8)
    answer = model.generate_answer(features, "what is the dog doing", max_new_tokens=8)
    assert answer == model.processor.decode(greedy).strip()


def _uncached_greedy(model, prompt, frames, steps: int) -> list[int]:
    ids = list(prompt.input_ids)
    generated = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(torch.tensor([ids]), frames, prompt.video_start).logits[0, -1].argmax())
            if token == model.processor.eos_id:
                break
            generated.append(token)
            ids.append(token)
    return generated


def test_training_loss_reaches_every_trainable(model):
    """The training path (labels, no cache) sends gradient to every adapter tensor, soft-capped layers too."""
    prompt = model.processor.encode_multiple_choice(*QUESTION, answer=3)
    model.zero_grad()
    loss = model(torch.tensor([prompt.input_ids]), video(model)[None], prompt.video_start,
                 labels=torch.tensor([prompt.labels])).loss
    loss.backward()
    for name, param in model.adapter.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name
    model.zero_grad()


def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "plugin", save_base=True)
    loaded = TopaForCausalLM.from_pretrained(tmp_path / "plugin")
    assert type(loaded.llm) is type(model.llm)
    prompt = model.processor.encode_multiple_choice(*QUESTION, answer=0)
    frames = video(model, seed=3)
    ids = torch.tensor([prompt.input_ids])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(ids, frames[None], prompt.video_start).logits, model(ids, frames[None], prompt.video_start).logits
        )


def test_unsupported_family_fails_at_construction():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        TopaForCausalLM(TopaConfig(text_config=gpt2.config.to_dict()), llm=gpt2)


def test_family_with_unexpected_attention_fails_at_construction(toy_llama_dir):
    llm = AutoModelForCausalLM.from_pretrained(toy_llama_dir)
    del llm.model.layers[1].self_attn.k_proj
    with pytest.raises(ValueError, match="layer 1: self_attn lacks k_proj"):
        TopaForCausalLM(TopaConfig(text_config=llm.config.to_dict()), llm=llm)


def test_static_cache_is_refused(toy_llama_dir):
    """A static cache hands over a fixed-size key buffer: gate2 would land on the wrong keys."""
    from transformers import StaticCache

    llm = AutoModelForCausalLM.from_pretrained(toy_llama_dir)
    model = TopaForCausalLM(TopaConfig(text_config=llm.config.to_dict()), llm=llm)
    cache = StaticCache(config=llm.config, max_cache_len=64)
    with pytest.raises(ValueError, match="needs a DynamicCache"):
        model(torch.tensor([[1, 5, 6]]), video_start=1, past_key_values=cache, use_cache=True)


# ----- the same families with the LLM quantized (bitsandbytes on CPU) -----
QUESTIONS = [QUESTION, ("where is the dog", ["on the sofa", "in the garden", "under the table", "next to the door", "in the car"])]


def quantized_twin(model, bits: str) -> TopaForCausalLM:
    """``model``'s TOPA, adapter and all, over its base LLM loaded quantized by the plugin."""
    twin = TopaForCausalLM(model.config, llm=load_llm(model.llm.name_or_path, torch.float32, bits))
    twin.adapter.load_state_dict(model.adapter.state_dict())
    twin.processor = model.processor
    return twin.eval()


@pytest.fixture(scope="module", params=["8bit", "4bit"])
def quantized(request, model):
    return request.param, quantized_twin(model, request.param)


def all_scores(model) -> torch.Tensor:
    """Choice scores [questions x videos, 5] over several videos and questions."""
    videos = [torch.randn(7, FEATURE_DIM, generator=torch.Generator().manual_seed(seed)) for seed in range(3)]
    return torch.stack([model.score_choices(v, *q, use_memory=False) for v in videos for q in QUESTIONS])


def test_quantized_layers_and_full_precision_adapter(quantized):
    import bitsandbytes as bnb

    bits, model = quantized
    layer = bnb.nn.Linear8bitLt if bits == "8bit" else bnb.nn.Linear4bit
    attention = model.llm.model.layers[-1].self_attn
    for name in model.decoder_family.modules:
        if name != "k_norm":
            assert isinstance(getattr(attention, name), layer), name
    assert all(p.dtype == torch.float32 for p in model.adapter.parameters())
    assert not isinstance(model.llm.get_input_embeddings(), layer)


def test_quantized_scores_follow_their_full_precision_scores(model, quantized):
    """8-bit stays within 0.3 nats of full precision and ranks like it wherever full precision has a
    0.5-nat margin; 4-bit (far lossier on tiny random models) within 2 nats. Both really are quantized."""
    bits, twin = quantized
    full, quant = all_scores(model), all_scores(twin)
    diff = (quant - full).abs()
    assert diff.max() > 1e-3  # not the full-precision model in disguise
    assert diff.max() <= (0.3 if bits == "8bit" else 2.0), diff.max()
    if bits == "8bit":
        best = full.sort(-1).values
        clear = best[:, 1] - best[:, 0] > 0.5
        assert clear.any() and torch.equal(quant.argmin(-1)[clear], full.argmin(-1)[clear])


def test_4bit_matches_the_oracle_on_its_dequantized_weights(model):
    """With an fp32 compute dtype a 4-bit layer multiplies by its dequantized weight: the float64 oracle on
    those weights gives TOPA's logits and choice scores exactly (prompts' k/v through the 4-bit modules).
    8-bit has no such oracle: it quantizes the activations too."""
    twin = quantized_twin(model, "4bit")
    reference = Oracle(dequantized_view(twin.llm), model.adapter.state_dict(), ADAPTER_LAYER)
    prompt = twin.processor.encode_multiple_choice(*QUESTION, answer=2)
    frames = video(twin)
    with torch.no_grad():
        ours = twin(torch.tensor([prompt.input_ids]), frames[None], prompt.video_start).logits[0]
    assert (ours.double() - reference.logits(prompt.input_ids, frames, prompt.video_start)).abs().max() <= TOLERANCE
    features = torch.randn(12, FEATURE_DIM, generator=torch.Generator().manual_seed(5))
    sequences = [twin.processor.encode_multiple_choice(*QUESTION, answer=i).input_ids for i in range(5)]
    ref = reference_choice_scores(reference, sequences, twin.prepare_video(features, use_memory=False), prompt.video_start)
    assert (twin.score_choices(features, *QUESTION, use_memory=False).double() - ref).abs().max() <= TOLERANCE


def test_quantized_training_loss_reaches_every_trainable(quantized):
    """Gradient flows back through the quantized modules to every adapter tensor, after an inference call
    (bitsandbytes' CPU repacking would otherwise cut 4-bit layers off autograd)."""
    _, twin = quantized
    all_scores(twin)
    test_training_loss_reaches_every_trainable(twin.train())
    twin.eval()
