"""open_clip loading from a local config + weights file, and the encoders' outputs."""
import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from topa_plugin.demo.toy import build_toy_clip
from topa_plugin.features.clip import ClipLoadError, load_clip

TEXTS = ["a woman cracks eggs into a bowl", "a dog runs across the lawn", "", "two players jump for the ball",
         "someone stirs a pot on the stove while talking on the phone"]


@pytest.fixture(scope="module")
def encoder(toy_clip):
    config, weights = toy_clip
    return load_clip(str(config), str(weights), "cpu")


@pytest.fixture(scope="module")
def reference(toy_clip):
    """The same files loaded with open_clip's own API, independently of topa_plugin."""
    config, weights = toy_clip
    open_clip.add_model_config(config)
    model, _, preprocess = open_clip.create_model_and_transforms(config.stem, pretrained=str(weights))
    return model.eval(), open_clip.get_tokenizer(config.stem), preprocess


def test_text_embeddings_match_open_clip(encoder, reference):
    model, tokenizer, _ = reference
    with torch.inference_mode():
        expected = model.encode_text(tokenizer(TEXTS))
    got = encoder.encode_text(TEXTS, batch_size=2)
    assert got.shape == (len(TEXTS), 768) and encoder.embed_dim == 768
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_batch_size_does_not_change_results(encoder):
    torch.testing.assert_close(encoder.encode_text(TEXTS, batch_size=1), encoder.encode_text(TEXTS, batch_size=64),
                               rtol=1e-4, atol=1e-5)
    assert encoder.encode_text([]).shape == (0, 768)


def test_image_embeddings_use_the_open_clip_transform(encoder, reference):
    model, _, preprocess = reference
    frames = np.random.default_rng(0).integers(0, 256, size=(5, 48, 40, 3), dtype=np.uint8)
    with torch.inference_mode():
        expected = model.encode_image(torch.stack([preprocess(Image.fromarray(f)) for f in frames]))
    got = encoder.encode_images(frames, batch_size=2)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(encoder.encode_images([Image.fromarray(f) for f in frames]), got)
    with pytest.raises(ValueError, match="uint8"):
        encoder.encode_images(frames.astype(np.float32))


def test_identity_tracks_config_and_weights(toy_clip, tmp_path, encoder):
    config, weights = toy_clip
    assert load_clip(str(config), str(weights)).identity == encoder.identity
    _, other_weights = build_toy_clip(tmp_path / "other", seed=1)
    other = load_clip(str(config), str(other_weights))
    assert other.identity != encoder.identity
    assert not torch.allclose(other.encode_text(TEXTS[:1]), encoder.encode_text(TEXTS[:1]))


def test_local_config_cannot_shadow_a_builtin_model(toy_clip, tmp_path):
    builtin = json.dumps(open_clip.get_model_config("ViT-B-32"), sort_keys=True)
    shadow = tmp_path / "ViT-B-32.json"
    shadow.write_text(toy_clip[0].read_text())
    enc = load_clip(str(shadow), str(toy_clip[1]))
    assert json.dumps(open_clip.get_model_config("ViT-B-32"), sort_keys=True) == builtin
    assert enc.embed_dim == 768


def test_bad_config_and_missing_weights_are_named(toy_clip, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"embed_dim": 8, "vision_cfg": {}}))
    with pytest.raises(ValueError, match=r"bad\.json.*text_cfg"):
        load_clip(str(bad), str(toy_clip[1]))
    with pytest.raises(ClipLoadError, match="nowhere.safetensors"):
        load_clip(str(toy_clip[0]), str(tmp_path / "nowhere.safetensors"))


def test_identity_and_width_are_known_without_loading(toy_clip, encoder):
    """What a cached evaluation run needs of CLIP, read from the files alone."""
    from topa_plugin.features.clip import configured_embed_dim, encoder_identity

    config, weights = toy_clip
    assert encoder_identity(str(config), str(weights)) == encoder.identity
    assert configured_embed_dim(str(config)) == encoder.embed_dim
    assert configured_embed_dim("ViT-L-14") == 768 and configured_embed_dim("no-such-model") is None
