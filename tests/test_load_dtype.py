"""Loading 16-bit weights at the dtype they are stored in and converting them where they land (issue 36): torch
converts a CPU-to-GPU copy on the host, a second pass over the weights before the first token; read as stored,
the model must still hold exactly what reading at the target dtype gave."""

from __future__ import annotations

import shutil

import pytest
import torch

from glmcore.models import CHATGLM_6B, GLM_4_9B_CHAT
from glmcore.models.checkpoint import (
    inspect_model_folder,
    read_weights,
    rewrite_weights,
    stored_tensor_dtypes,
)
from glmcore.models.loading import load_config, load_model, reading_dtype


def test_weights_are_read_at_their_stored_dtype_only_when_all_share_one_16_bit_dtype():
    assert reading_dtype(["float16", "float16"], torch.bfloat16) is torch.float16
    assert reading_dtype(["bfloat16"], torch.float32) is torch.bfloat16
    assert reading_dtype(["float16", "float32"], torch.bfloat16) is torch.bfloat16
    assert reading_dtype(["float32"], torch.bfloat16) is torch.bfloat16


@pytest.mark.parametrize("family", [CHATGLM_6B, GLM_4_9B_CHAT], ids=lambda family: family.name)
def test_a_16_bit_checkpoint_loads_to_what_reading_it_at_the_target_dtype_gives(
    tiny_family_dir, tmp_path, family
):
    folder = shutil.copytree(tiny_family_dir(family), tmp_path / family.name)
    state: dict = {}
    for shard in inspect_model_folder(folder).weight_files:
        state.update(read_weights(shard))
    rewrite_weights(folder, {name: tensor.half() for name, tensor in state.items()})
    assert set(stored_tensor_dtypes(inspect_model_folder(folder)).values()) == {"float16"}
    model_class = family.implementation().model_class
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    for dtype in (torch.bfloat16, torch.float32):
        model = load_model(folder, dtype=dtype, device="cpu")
        expected = model_class.from_pretrained(
            folder, config=load_config(folder), dtype=dtype, device_map={"": "cpu"}
        ).eval()
        assert model.config.dtype == dtype
        loaded, reference = model.state_dict(), expected.state_dict()
        assert loaded.keys() == reference.keys()
        for name, tensor in reference.items():
            assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, expected(input_ids=ids).logits)
