"""`topa convert-official`: a tiny checkpoint in the release layout converts into a plugin directory
whose scores equal the Meta-format release model's (independent float64 forward in release_fixtures)."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch

from tests.helpers.release_fixtures import (
    build_release,
    meta_logits,
    release_scores,
    save_release_checkpoint,
    write_malicious_checkpoint,
    write_malicious_memory,
)
from topa_plugin.cli import main
from topa_plugin.release.convert import convert_official
from topa_plugin.release.meta_llama import ConversionError, find_meta_files, load_meta_state_dict, meta_llama_config, write_hf_base

QUESTIONS = [
    ("what did the person do after picking up the knife", ["cut the onion", "washed the pan", "opened the fridge",
                                                            "poured the water", "left the kitchen"]),
    ("Where is the dog?", ["in the yard", "on the table", "under the cup", "in the pot", "at the court"]),
    ("how many times did the player shoot.", ["once", "twice", "three times", "never", "four times"]),
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from topa_plugin.demo.toy import train_toy_tokenizer

    return train_toy_tokenizer(tmp_path_factory.mktemp("tok")).parent


@pytest.fixture(scope="module")
def sp(tokenizer_dir):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model"))


@pytest.fixture(scope="module")
def release(tmp_path_factory, tokenizer_dir):
    """Llama-2 shaped (MHA), two model-parallel shards, adapters on all layers."""
    return build_release(tmp_path_factory.mktemp("release"), n_shards=2, tokenizer_dir=tokenizer_dir)


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "topa"
    argv = ["convert-official", "--llama-dir", str(release.llama_dir), "--checkpoint", str(release.checkpoint),
            "--memory", str(release.memory), "--out", str(out), "--dtype", "float32"]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def model(converted):
    from topa_plugin.modeling import TopaForCausalLM

    return TopaForCausalLM.from_pretrained(converted)


# ---------------------------------------------------------------- base LLM


@pytest.mark.parametrize(
    "shape",
    [{"n_shards": 2}, {"n_heads": 8, "n_kv_heads": 2, "rope_theta": 500000.0, "ffn_dim_multiplier": 1.3, "multiple_of": 16}],
    ids=["mha-2-shards", "gqa-llama3-shaped"],
)
def test_meta_to_hf_logits_match_meta_forward(tmp_path, tokenizer_dir, shape):
    from transformers import LlamaForCausalLM

    rel = build_release(tmp_path / "rel", tokenizer_dir=tokenizer_dir, **shape)
    files = find_meta_files(rel.llama_dir)
    write_hf_base(files, meta_llama_config(files), tmp_path / "hf", dtype=torch.float32, progress=False)
    llm = LlamaForCausalLM.from_pretrained(tmp_path / "hf")
    assert llm.config.intermediate_size == rel.meta["layers.0.feed_forward.w1.weight"].shape[0]
    tokens = torch.randint(3, llm.config.vocab_size, (23,)).tolist()
    with torch.no_grad():
        ours = llm(torch.tensor([tokens])).logits[0].double()
    reference = meta_logits(rel, tokens, topa=False)
    assert (ours - reference).abs().max() <= 1e-4


def test_model_parallel_shards_merge_to_the_full_weights(release):
    files = find_meta_files(release.llama_dir)
    assert len(files.shards) == 2
    merged = load_meta_state_dict(files.shards, progress=False)
    assert merged.keys() == release.meta.keys()
    for key, tensor in release.meta.items():
        assert torch.equal(merged[key].float(), tensor), key


def test_default_dtype_keeps_the_shards_dtype(release, tmp_path):
    from transformers import AutoConfig

    out = convert_official(tmp_path / "out", release.checkpoint, llama_dir=release.llama_dir, progress=False)
    assert AutoConfig.from_pretrained(out / "base").dtype == torch.bfloat16
    assert not (out / "memory.safetensors").exists()


# ---------------------------------------------------------------- acceptance: scores


@pytest.mark.parametrize("use_memory", [True, False], ids=["memory", "no-memory"])
@pytest.mark.parametrize("n_frames", [4, 10, 23])
def test_scores_equal_the_meta_format_release(model, release, sp, use_memory, n_frames):
    generator = torch.Generator().manual_seed(n_frames)
    for question, options in QUESTIONS:
        features = torch.randn(n_frames, 768, generator=generator)
        ours = model.score_choices(features, question, options, use_memory=use_memory)
        reference = release_scores(release, sp, features, question, options, use_memory)
        assert (ours.double() - reference).abs().max() <= 1e-4, (question, ours, reference)
        assert int(ours.argmin()) == int(reference.argmin())


def test_converted_config_and_memory(converted, model, release):
    from safetensors.torch import load_file

    config = json.loads((converted / "config.json").read_text())
    assert config["base_model_name_or_path"] == "base"
    assert (config["adapter_len"], config["adapter_layer"], config["max_feats"]) == (5, 4, 10)
    assert config["memory_temperature"] == 100.0
    assert torch.equal(load_file(str(converted / "memory.safetensors"))["memory"], release.memory_tensor)
    assert torch.equal(model.adapter.gate1[1], release.trainables["layers.1.attention.gate1"].reshape(-1))


def test_gqa_model_with_top_adapter_layers(tmp_path, tokenizer_dir, sp):
    """Llama-3-shaped GQA, adapters on the top 2 of 4 layers: gates come from layers 2 and 3."""
    from topa_plugin.modeling import TopaForCausalLM

    rel = build_release(tmp_path / "rel", tokenizer_dir=tokenizer_dir, n_heads=8, n_kv_heads=2,
                        rope_theta=500000.0, adapter_layer=2, adapter_len=3, seed=1)
    with pytest.warns(UserWarning, match="adapter_layer=2 < 4"):
        out = convert_official(tmp_path / "out", rel.checkpoint, llama_dir=rel.llama_dir, memory=rel.memory,
                               dtype="float32", progress=False)
    model = TopaForCausalLM.from_pretrained(out)
    question, options = QUESTIONS[0]
    features = torch.randn(13, 768, generator=torch.Generator().manual_seed(5))
    ours = model.score_choices(features, question, options)
    reference = release_scores(rel, sp, features, question, options, use_memory=True)
    assert (ours.double() - reference).abs().max() <= 1e-4


def test_base_route_references_an_existing_hf_llama(converted, model, release, tmp_path):
    from topa_plugin.modeling import TopaForCausalLM

    out = tmp_path / "out"
    argv = ["convert-official", "--base", str(converted / "base"), "--checkpoint", str(release.checkpoint),
            "--memory", str(release.memory), "--memory-rows", "0", "--out", str(out)]
    assert main(argv) == 0
    assert not (out / "base").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["base_model_name_or_path"] == str((converted / "base").resolve())
    other = TopaForCausalLM.from_pretrained(out)
    question, options = QUESTIONS[1]
    features = torch.randn(6, 768, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(other.score_choices(features, question, options), model.score_choices(features, question, options))


def test_memory_rows_keeps_the_first_rows(release, tmp_path):
    from safetensors.torch import load_file

    out = convert_official(tmp_path / "out", release.checkpoint, llama_dir=release.llama_dir, memory=release.memory,
                           memory_rows=10, progress=False)
    assert torch.equal(load_file(str(out / "memory.safetensors"))["memory"], release.memory_tensor[:10])


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_of_the_output_encodes_like_sentencepiece(converted, sp):
    from transformers import AutoTokenizer

    texts = [
        "Instruction: Choose the correct answer based on the video and question.\nVideo:",
        "Question: What is he doing?\nChoices: \n(A) cooking\n(B) running\nAnswer: The correct choice is (B)",
        " leading space", "   three leading", "trailing  ", "\n\nDescription: a dog runs.\n",
        "ünïcödé 漢字 émoji 🎬 and digits 2024", "tabs\tand\rreturns",
    ]
    for directory in (converted, converted / "base"):
        tokenizer = AutoTokenizer.from_pretrained(directory)
        for text in texts:
            assert tokenizer(text, add_special_tokens=False).input_ids == sp.encode(text), (directory, text)
            assert tokenizer(text).input_ids == [sp.bos_id(), *sp.encode(text)]
        # special-token text is plain text to sentencepiece; HF needs split_special_tokens (as TopaProcessor does)
        text = "</s> is plain text here"
        assert tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids == sp.encode(text)
        assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (sp.bos_id(), sp.eos_id())


# ---------------------------------------------------------------- refusals and errors


def _convert(release, out, checkpoint=None, memory=None, extra=()):
    argv = ["convert-official", "--llama-dir", str(release.llama_dir), "--checkpoint", str(checkpoint or release.checkpoint),
            "--out", str(out), *extra]
    if memory is not None:
        argv += ["--memory", str(memory)]
    return main(argv)


def test_cli_refuses_a_checkpoint_that_runs_code(release, tmp_path, capsys):
    marker = tmp_path / "ran"
    bad = write_malicious_checkpoint(tmp_path / "checkpoint_9.pth", marker, release)
    assert _convert(release, tmp_path / "out", checkpoint=bad) != 0
    err = capsys.readouterr().err
    assert str(bad) in err and "refusing to unpickle global" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("smuggle_storage", [False, True], ids=["os.system", "via-_load_from_bytes"])
def test_cli_refuses_a_memory_pickle_that_runs_code(release, tmp_path, capsys, smuggle_storage):
    marker = tmp_path / "ran"
    bad = write_malicious_memory(tmp_path / "memory.pkl", marker, smuggle_storage=smuggle_storage)
    assert _convert(release, tmp_path / "out", memory=bad) != 0
    err = capsys.readouterr().err
    assert str(bad) in err and "refusing to unpickle global" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_adapter_shape_not_matching_args_names_file_and_key(release, tmp_path, capsys):
    args = argparse.Namespace(**{**vars(release.args), "adapter_len": release.args.adapter_len + 1})
    bad = tmp_path / "checkpoint_0.pth"
    save_release_checkpoint(bad, release.trainables, args)
    assert _convert(release, tmp_path / "out", checkpoint=bad) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "adapter_query.weight" in err and "adapter_len" in err


def test_missing_args_field_names_it(release, tmp_path):
    args = argparse.Namespace(**{k: v for k, v in vars(release.args).items() if k != "max_feats"})
    bad = tmp_path / "checkpoint_0.pth"
    save_release_checkpoint(bad, release.trainables, args)
    with pytest.raises(ConversionError, match=r"checkpoint_0\.pth: args\.max_feats"):
        convert_official(tmp_path / "out", bad, llama_dir=release.llama_dir, progress=False)


def test_params_not_matching_shards_names_the_key(release, tmp_path):
    llama = tmp_path / "llama" / "7B"
    shutil.copytree(release.llama_dir, llama)
    shutil.copy(release.tokenizer, llama.parent / "tokenizer.model")
    params = json.loads((llama / "params.json").read_text())
    (llama / "params.json").write_text(json.dumps({**params, "multiple_of": 256}))
    with pytest.raises(ConversionError, match=r"consolidated\.\*\.pth: layers\.0\.feed_forward\.w1\.weight has shape"):
        convert_official(tmp_path / "out", release.checkpoint, llama_dir=llama, progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_missing_tokenizer_is_reported(release, tmp_path):
    llama = tmp_path / "7B"
    shutil.copytree(release.llama_dir, llama)
    with pytest.raises(ConversionError, match="tokenizer.model not found"):
        convert_official(tmp_path / "out", release.checkpoint, llama_dir=llama, progress=False)


def test_existing_output_is_not_overwritten(release, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(ConversionError, match="not empty"):
        convert_official(tmp_path / "out", release.checkpoint, llama_dir=release.llama_dir, progress=False)
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"
