"""P-tuning v2 prefixes: both variants, our checkpoint format and ChatGLM-6B's, training through 4-bit, and a
prefix's keys and values made apart from the model (what serving gives each request's row)."""

from __future__ import annotations

import pytest
import torch
from support.prefix_training import assert_prefix_steps_change_only_the_prefix

import glmcore
from glmcore.data import Example, TrainingCollator, training_features
from glmcore.models import FAMILIES
from glmcore.prefix import PrefixMismatch, encode_prefix, read_prefix_checkpoint, save_prefix_checkpoint


@pytest.mark.parametrize("projection", [False, True])
def test_saved_prefix_reloads_with_identical_logits(tiny_model_dir, tiny_tokenizer, tmp_path, projection):
    model = glmcore.load_model(tiny_model_dir, pre_seq_len=3, prefix_projection=projection)
    assert model.transformer.prefix_encoder.embedding.weight.dtype == torch.float32
    save_prefix_checkpoint(model, tmp_path / "checkpoint-1")
    reloaded = glmcore.load_model(tiny_model_dir, prefix_checkpoint=tmp_path / "checkpoint-1")
    assert (reloaded.config.pre_seq_len, reloaded.config.prefix_projection) == (3, projection)
    ids = torch.tensor([tiny_tokenizer.encode("类型#上衣*颜色#白色")])
    base = glmcore.load_model(tiny_model_dir)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, atol=0, rtol=0)
        assert (reloaded(ids).logits - base(ids).logits).abs().max() > 1e-3, (
            "the prefix must change the output"
        )


def test_a_checkpoint_that_disagrees_with_the_request_names_both_values(tiny_model_dir, tmp_path):
    save_prefix_checkpoint(glmcore.load_model(tiny_model_dir, pre_seq_len=3), tmp_path / "checkpoint-1")
    with pytest.raises(PrefixMismatch, match="pre_seq_len 5 was asked for.*pre_seq_len 3"):
        glmcore.load_model(tiny_model_dir, prefix_checkpoint=tmp_path / "checkpoint-1", pre_seq_len=5)
    with pytest.raises(PrefixMismatch, match="prefix_projection True was asked for.*prefix_projection False"):
        glmcore.load_model(
            tiny_model_dir, prefix_checkpoint=tmp_path / "checkpoint-1", prefix_projection=True
        )


def test_published_format_checkpoint_loads(tiny_model_dir, tiny_tokenizer, tmp_path):
    """ChatGLM-6B's scripts save only `transformer.prefix_encoder.*` in pytorch_model.bin beside a config.json."""
    model = glmcore.load_model(tiny_model_dir, pre_seq_len=2)
    folder = tmp_path / "checkpoint-1000"
    folder.mkdir()
    state = {
        "transformer.prefix_encoder.embedding.weight": model.transformer.prefix_encoder.embedding.weight.detach()
    }
    torch.save(state, folder / "pytorch_model.bin")
    model.config.to_json_file(str(folder / "config.json"))
    reloaded = glmcore.load_model(tiny_model_dir, prefix_checkpoint=folder)
    ids = torch.tensor([tiny_tokenizer.encode("简约")])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_four_bit_p_tuning_step_lowers_the_loss_and_changes_only_the_prefix(tiny_model_dir, tiny_tokenizer):
    torch.manual_seed(0)
    model = glmcore.load_model(tiny_model_dir, quantization_bit=4, pre_seq_len=4, dtype=torch.float32)
    assert "Linear4bit" in type(model.transformer.layers[0].attention.query_key_value).__name__
    examples = [Example("类型#上衣*颜色#白色", "白色上衣简约百搭"), Example("类型#裙*材质#牛仔布", "牛仔裙")]
    batch = TrainingCollator(tiny_tokenizer.pad_token_id)(
        [training_features(tiny_tokenizer, example, 16, 12) for example in examples]
    )
    assert_prefix_steps_change_only_the_prefix(model, batch, steps=8)


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("family", FAMILIES, ids=[family.name for family in FAMILIES])
def test_a_prefix_is_encoded_apart_from_the_model_as_the_model_encodes_it(
    family, projection, tiny_family_dir, tmp_path
):
    """`encode_prefix` gives the keys and values a model with the prefix installed computes (in fp32 and in
    bf16, from the checkpoint or from its tensors), and leaves the model it is given the config of untouched."""
    folder = tiny_family_dir(family)
    torch.manual_seed(0)
    checkpoint = save_prefix_checkpoint(
        glmcore.load_model(folder, pre_seq_len=3, prefix_projection=projection), tmp_path / "checkpoint-1"
    )
    installed = glmcore.load_model(folder, prefix_checkpoint=checkpoint).eval()
    model = glmcore.load_model(folder)
    config_before = model.config.to_dict()
    parameters_before = dict(model.named_parameters())
    state_before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    _, state = read_prefix_checkpoint(checkpoint)
    for dtype, prefix in ((torch.float32, checkpoint), (torch.bfloat16, state)):
        encoded = encode_prefix(prefix, model.config, dtype=dtype, device="cpu")
        with torch.no_grad():
            expected = installed.transformer.prefix_keys_values(1, dtype)
        assert len(encoded) == model.config.num_layers
        for (key, value), (expected_key, expected_value) in zip(encoded, expected, strict=True):
            assert key.dtype == dtype and key.shape[1] == 3
            torch.testing.assert_close(key, expected_key[0], atol=0, rtol=0)
            torch.testing.assert_close(value, expected_value[0], atol=0, rtol=0)
    assert model.config.to_dict() == config_before and model.transformer.prefix_encoder is None
    assert dict(model.named_parameters()) == parameters_before
    assert model.state_dict().keys() == state_before.keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state_before[name]), f"{name} changed"
