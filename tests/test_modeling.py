"""TopaForCausalLM against the independent plain-torch oracle in tests/helpers/reference_topa.py."""

from __future__ import annotations

import dataclasses

import pytest
import sentencepiece as spm
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.helpers.reference_topa import reference_logits, reference_scores, reference_video
from topa_plugin.configuration import TopaConfig
from topa_plugin.demo.toy import fan_in_rescale
from topa_plugin.modeling import TopaForCausalLM
from topa_plugin.processing import TopaProcessor

FEATURE_DIM = 32
MAX_FEATS = 10
ADAPTER_LAYER = 3  # of the toy's 4 layers: the lowest layer must still run, without adapter

QUESTIONS = [
    ("what did the person do after picking up the knife",
     ["cut the onion", "washed the pan", "opened the fridge", "poured the water", "left the kitchen"]),
    ("Where is the dog.", ["in the garden", "on the court", "under the table", "in the kitchen", "on the lawn"]),
    ("how many times does the player shoot?", ["once", "twice", "three times", "four times", "never"]),
]


def build_model(llm_dir, base_dir, seed=0, memory_rows=48):
    """A TOPA model over a rescaled toy Llama (saved to ``base_dir``, its base reference) with
    random, non-trivial trainables and a random memory."""
    llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    fan_in_rescale(llm, generator)  # otherwise gates, video and question barely move the logits
    llm.save_pretrained(base_dir)
    llm = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = TopaConfig(
        text_config=llm.config.to_dict(), feature_dim=FEATURE_DIM, max_feats=MAX_FEATS, adapter_len=6,
        adapter_layer=ADAPTER_LAYER,
    )
    model = TopaForCausalLM(config, llm=llm)
    with torch.no_grad():
        for param in model.adapter.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
        model.adapter.gate2.mul_(2.0).sub_(1.0)  # mixed signs, far from the init value
    model.memory = torch.nn.functional.normalize(torch.randn(memory_rows, FEATURE_DIM, generator=generator), dim=-1)
    model.processor = TopaProcessor(AutoTokenizer.from_pretrained(llm_dir), max_feats=MAX_FEATS)
    return model.eval()


def adapter_tensors(model):
    return {name: tensor for name, tensor in model.adapter.state_dict().items()}


@pytest.fixture(scope="module")
def model(toy_llama_dir, tmp_path_factory):
    return build_model(toy_llama_dir, tmp_path_factory.mktemp("mha_base"))


@pytest.fixture(scope="module")
def gqa_model(toy_llama_gqa_dir, tmp_path_factory):
    return build_model(toy_llama_gqa_dir, tmp_path_factory.mktemp("gqa_base"), seed=1)


@pytest.fixture(scope="module")
def sp(toy_tokenizer_dir):
    return spm.SentencePieceProcessor(model_file=str(toy_tokenizer_dir / "tokenizer.model"))


def features(n_frames, seed):
    return torch.randn(n_frames, FEATURE_DIM, generator=torch.Generator().manual_seed(seed))


def mc_prompt(model, index=0, answer=1):
    question, options = QUESTIONS[index]
    return model.processor.encode_multiple_choice(question, options, answer)


def test_llm_is_frozen_and_trainables_are_the_adapter(model):
    assert all(not p.requires_grad for p in model.llm.parameters())
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {
        "adapter.visual_proj.weight", "adapter.temporal_emb.weight", "adapter.adapter_query.weight",
        "adapter.gate1", "adapter.gate2",
    }
    assert model.adapter.gate1.shape == (ADAPTER_LAYER, model.llm.config.num_attention_heads)
    assert model.adapter.adapter_query.weight.shape == (ADAPTER_LAYER * 6, model.llm.config.hidden_size)
    assert set(model.trainable_state_dict()) == names
    assert "memory" not in model.state_dict()


def test_fresh_adapter_has_release_initial_gates(toy_llama_dir):
    llm = AutoModelForCausalLM.from_pretrained(toy_llama_dir)
    model = TopaForCausalLM(TopaConfig(text_config=llm.config.to_dict()), llm=llm)
    assert model.config.adapter_layer == llm.config.num_hidden_layers
    assert torch.all(model.adapter.gate1 == 0)
    assert torch.all(model.adapter.gate2 == -3.5)


@pytest.mark.parametrize("with_video", [True, False])
def test_forward_matches_reference(model, with_video):
    prompt = mc_prompt(model)
    video = model.prepare_video(features(7, 0))
    ids = torch.tensor([prompt.input_ids])
    with torch.no_grad():
        ours = model(ids, video[None], prompt.video_start).logits[0] if with_video else model(ids).logits[0]
    ref = reference_logits(
        model.llm, adapter_tensors(model), ADAPTER_LAYER, prompt.input_ids,
        video if with_video else None, prompt.video_start,
    )
    assert (ours.double() - ref).abs().max() <= 1e-4


def test_reference_is_sensitive_to_gates_and_video(model):
    """Guards the oracle comparisons: gates, video bias and video must all move the logits."""
    prompt = mc_prompt(model)
    video = model.prepare_video(features(7, 0))
    tensors = adapter_tensors(model)
    base = reference_logits(model.llm, tensors, ADAPTER_LAYER, prompt.input_ids, video, prompt.video_start)
    for name in ("gate1", "gate2"):
        changed = dict(tensors, **{name: tensors[name] + 1.0})
        other = reference_logits(model.llm, changed, ADAPTER_LAYER, prompt.input_ids, video, prompt.video_start)
        assert (other - base).abs().max() > 0.5
    other = reference_logits(model.llm, tensors, ADAPTER_LAYER, prompt.input_ids, video * 0, prompt.video_start)
    assert (other - base).abs().max() > 0.5


@pytest.mark.parametrize("n_frames", [3, MAX_FEATS, 23])
@pytest.mark.parametrize("use_memory", [True, False])
def test_score_choices_matches_release_protocol(model, sp, n_frames, use_memory):
    for index, (question, options) in enumerate(QUESTIONS):
        video = features(n_frames, seed=10 + index)
        ours = model.score_choices(video, question, options, use_memory=use_memory)
        ref = reference_scores(
            model.llm, adapter_tensors(model), ADAPTER_LAYER, sp, video, question, options,
            memory=model.memory if use_memory else None,
        )
        assert ours.shape == (len(options),)
        assert (ours.double() - ref).abs().max() <= 1e-4
        assert int(ours.argmin()) == int(ref.argmin())


def test_score_choices_batch_equals_single(model):
    videos = [features(5 + i, seed=20 + i) for i in range(len(QUESTIONS))]
    questions = [q for q, _ in QUESTIONS]
    options = [o for _, o in QUESTIONS]
    batch = model.score_choices(videos, questions, options)
    assert batch.shape == (len(QUESTIONS), 5)
    for i in range(len(QUESTIONS)):
        torch.testing.assert_close(batch[i], model.score_choices(videos[i], questions[i], options[i]))
    with pytest.raises(ValueError, match="same number of choices"):
        model.score_choices(videos[:2], questions[:2], [options[0], options[1][:3]])


def test_score_choices_with_answer_tails_of_different_lengths(model, monkeypatch):
    """Tokenizers may split answer letters unevenly: the padded suffix batch must still score exactly."""
    inner = model.processor
    filler = inner.encode_text(" then")[-1]

    class RaggedProcessor:
        eos_id = inner.eos_id

        def encode_multiple_choice(self, question, options, answer):
            prompt = inner.encode_multiple_choice(question, options, answer)
            ids = prompt.input_ids[:-1] + [filler] * (2 * answer) + [inner.eos_id]
            return dataclasses.replace(prompt, input_ids=ids, labels=ids)

    monkeypatch.setattr(model, "processor", RaggedProcessor())
    question, options = QUESTIONS[1]
    video = features(6, 40)
    ours = model.score_choices(video, question, options)
    sequences = [model.processor.encode_multiple_choice(question, options, i).input_ids for i in range(5)]
    start = inner.encode_multiple_choice(question, options, 0).video_start
    first = next(i for i, column in enumerate(zip(*sequences)) if len(set(column)) > 1)
    prepared = model.prepare_video(video)[None]
    with torch.no_grad():
        for i, seq in enumerate(sequences):
            logp = torch.log_softmax(model(torch.tensor([seq]), prepared, start).logits[0].float(), dim=-1)
            expected = -torch.stack([logp[t - 1, seq[t]] for t in range(first, len(seq))]).mean()
            assert abs(ours[i].item() - expected.item()) <= 1e-4


def test_gqa_model_matches_reference(gqa_model, sp):
    assert gqa_model.llm.config.num_key_value_heads < gqa_model.llm.config.num_attention_heads
    prompt = mc_prompt(gqa_model, 1)
    video = gqa_model.prepare_video(features(12, 3))
    with torch.no_grad():
        ours = gqa_model(torch.tensor([prompt.input_ids]), video[None], prompt.video_start).logits[0]
    ref = reference_logits(gqa_model.llm, adapter_tensors(gqa_model), ADAPTER_LAYER, prompt.input_ids, video, prompt.video_start)
    assert (ours.double() - ref).abs().max() <= 1e-4
    question, options = QUESTIONS[2]
    video = features(4, 4)
    ours = gqa_model.score_choices(video, question, options)
    ref = reference_scores(gqa_model.llm, adapter_tensors(gqa_model), ADAPTER_LAYER, sp, video, question, options, gqa_model.memory)
    assert (ours.double() - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("fixture", ["model", "gqa_model"])
def test_kv_cache_chunks_equal_full_forward(request, fixture):
    model = request.getfixturevalue(fixture)
    prompt = mc_prompt(model, 2)
    ids = torch.tensor([prompt.input_ids])
    video = model.prepare_video(features(9, 5))[None]
    with torch.no_grad():
        full = model(ids, video, prompt.video_start).logits
        split = prompt.video_start + MAX_FEATS + 4
        first = model(ids[:, :split], video, prompt.video_start, use_cache=True)
        second = model(ids[:, split:-2], video, prompt.video_start, past_key_values=first.cache, use_cache=True)
        # single-token steps exercise the decoding path (query length 1)
        third = model(ids[:, -2:-1], video_start=prompt.video_start, past_key_values=second.cache, use_cache=True)
        fourth = model(ids[:, -1:], video_start=prompt.video_start, past_key_values=third.cache, use_cache=True)
    chunked = torch.cat([first.logits, second.logits, third.logits, fourth.logits], dim=1)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)


def test_generate_answer_equals_greedy_recompute_without_cache(model):
    video_raw = features(6, 7)
    text = model.generate_answer(video_raw, "What happens in the video?", max_new_tokens=6)
    prompt = model.processor.encode_open_ended("What happens in the video?", None)
    video = model.prepare_video(video_raw)[None]
    ids = list(prompt.input_ids)
    generated = []
    with torch.no_grad():
        for _ in range(6):
            token = int(model(torch.tensor([ids]), video, prompt.video_start).logits[0, -1].argmax())
            if token == model.processor.eos_id:
                break
            generated.append(token)
            ids.append(token)
    assert generated, "the toy model should produce at least one token"
    assert text == model.processor.decode(generated).strip()


def test_generate_answer_stops_at_until(model):
    video = features(6, 7)
    full = model.generate_answer(video, "What happens in the video?", max_new_tokens=6)
    stop = full.strip()[1:3]
    assert stop and stop in full
    cut = model.generate_answer(video, "What happens in the video?", max_new_tokens=6, until=[stop])
    assert stop not in cut and full.startswith(cut)


def test_padded_mixed_batch_equals_single_sequences(model):
    """Right padding + attention_mask, and a different video_start per row (training batches)."""
    prompts = [mc_prompt(model, 0), model.processor.encode_summary("A person cuts an onion.")]
    assert prompts[0].video_start != prompts[1].video_start
    width = max(len(p.input_ids) for p in prompts)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p.input_ids)] = torch.tensor(p.input_ids)
        mask[i, : len(p.input_ids)] = 1
    videos = torch.stack([model.prepare_video(features(8, 11)), model.prepare_video(features(13, 12))])
    starts = torch.tensor([p.video_start for p in prompts])
    with torch.no_grad():
        batch = model(ids, videos, starts, attention_mask=mask).logits
        for i, p in enumerate(prompts):
            single = model(torch.tensor([p.input_ids]), videos[i : i + 1], p.video_start).logits[0]
            torch.testing.assert_close(batch[i, : len(p.input_ids)], single, atol=1e-5, rtol=1e-5)


def test_loss_is_mean_ce_over_labels_and_reaches_every_trainable(model):
    prompt = model.processor.encode_open_ended("what is cut?", "the onion")
    video = model.prepare_video(features(10, 13))
    labels = torch.tensor([prompt.labels])
    model.zero_grad()
    out = model(torch.tensor([prompt.input_ids]), video[None], prompt.video_start, labels=labels)
    ref = reference_logits(model.llm, adapter_tensors(model), ADAPTER_LAYER, prompt.input_ids, video, prompt.video_start)
    targets = torch.tensor(prompt.labels[1:])
    keep = targets != -100
    expected = torch.nn.functional.cross_entropy(ref[:-1][keep], targets[keep])
    assert abs(out.loss.item() - expected.item()) <= 1e-4
    out.loss.backward()
    for name, param in model.adapter.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.llm.parameters())
    model.zero_grad()


def test_prepare_video_shapes_and_errors(model):
    assert model.prepare_video(features(3, 0)).shape == (MAX_FEATS, FEATURE_DIM)
    assert model.prepare_video(features(30, 0).numpy(), use_memory=False).shape == (MAX_FEATS, FEATURE_DIM)
    torch.testing.assert_close(
        model.prepare_video(features(3, 0), use_memory=False).double(), reference_video(features(3, 0), MAX_FEATS, None)
    )
    with pytest.raises(ValueError, match=r"\[T, 32\]"):
        model.prepare_video(torch.zeros(4, 7))
    with pytest.raises(ValueError, match="video_features must have shape"):
        model(torch.tensor([[1, 2, 3]]), torch.zeros(1, 3, FEATURE_DIM), 0)


def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "plugin")
    names = {p.name for p in (tmp_path / "plugin").iterdir()}
    assert {"config.json", "adapter_model.safetensors", "memory.safetensors", "tokenizer.json"} <= names
    assert "model.safetensors" not in names  # the base LLM is referenced, not copied
    loaded = TopaForCausalLM.from_pretrained(tmp_path / "plugin")
    for key, value in model.trainable_state_dict().items():
        torch.testing.assert_close(loaded.trainable_state_dict()[key], value, rtol=0, atol=0)
    assert loaded.memory.dtype == torch.float16
    assert loaded.processor is not None and loaded.config.adapter_layer == ADAPTER_LAYER
    question, options = QUESTIONS[0]
    video = features(10, 14)
    expected = model.score_choices(video, question, options, use_memory=False)
    torch.testing.assert_close(loaded.score_choices(video, question, options, use_memory=False), expected)


def test_self_contained_directory_and_bf16_argmin(model, tmp_path):
    model.save_pretrained(tmp_path / "full", save_base=True)
    assert (tmp_path / "full" / "base" / "model.safetensors").is_file()
    bf16 = TopaForCausalLM.from_pretrained(tmp_path / "full", torch_dtype=torch.bfloat16)
    assert bf16.config.base_model_name_or_path == "base"
    assert bf16.llm.dtype == torch.bfloat16 and bf16.adapter.gate1.dtype == torch.float32
    agreements = 0
    for index, (question, options) in enumerate(QUESTIONS):
        video = features(10, 30 + index)
        f32 = model.score_choices(video, question, options)
        low = bf16.score_choices(video, question, options)
        assert low.dtype == torch.float32 and (low - f32).abs().max() < 0.15
        top2 = f32.sort().values
        if top2[1] - top2[0] > 0.05:  # only margins bf16 can resolve are meaningful
            assert int(low.argmin()) == int(f32.argmin())
            agreements += 1
    assert agreements >= 1


def test_from_pretrained_errors_name_the_file(model, tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError, match="config.json"):
        TopaForCausalLM.from_pretrained(tmp_path)
    model.save_pretrained(tmp_path / "p")
    save_file({"adapter.gate1": torch.zeros(3, 4)}, str(tmp_path / "p" / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match=r"adapter_model.safetensors: missing keys"):
        TopaForCausalLM.from_pretrained(tmp_path / "p")
    model.save_pretrained(tmp_path / "q")
    config = TopaConfig.from_pretrained(tmp_path / "q")
    config.base_model_name_or_path = "./nowhere"
    config.save_pretrained(tmp_path / "q")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TopaForCausalLM.from_pretrained(tmp_path / "q")


def test_activation_checkpointing_keeps_gradients(toy_llama_dir, tmp_path):
    prompt = None
    grads = []
    for checkpointing in (False, True):
        model = build_model(toy_llama_dir, tmp_path / f"base{checkpointing}").train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.is_activation_checkpointing
        prompt = prompt or model.processor.encode_summary("A dog runs in the garden.")
        video = model.prepare_video(features(5, 50))
        loss = model(torch.tensor([prompt.input_ids]), video[None], prompt.video_start, labels=torch.tensor([prompt.labels])).loss
        loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.adapter.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4)


def test_prompt_projections_are_reused_only_inside_an_inference_call(toy_llama_dir, tmp_path):
    """score_choices/generate_answer project the prompts once per call; training forwards never keep them."""
    model = build_model(toy_llama_dir, tmp_path / "base")
    calls = []
    k_proj = model.llm.model.layers[-1].self_attn.k_proj
    k_proj.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[-2]))
    features = torch.randn(7, model.config.feature_dim)
    model.score_choices(features, "what happens next?", ["a cat", "a dog", "the red ball"])
    prompt_projections = sum(n == model.config.adapter_len for n in calls)
    assert prompt_projections == 1, calls  # prefix and choices forwards share one projection
    assert model.adapter._prompt_kv is None
    calls.clear()
    ids = torch.arange(1, model.config.adapter_len + 3)[None]  # a length no prompt block has
    model(ids)
    model(ids)
    assert sum(n == model.config.adapter_len for n in calls) == 2
