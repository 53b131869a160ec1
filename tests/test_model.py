"""The native ChatGLM-6B: loading safely, padding, caching and generation behave like the published model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import glmcore
from glmcore.errors import GlmError
from glmcore.models.checkpoint import convert_to_safetensors, inspect_model_folder

PROMPTS = ["类型#上衣*材质#牛仔布*颜色#白色", "简约", "Hello world, a longer prompt than the others"]


def greedy_by_recomputation(model, ids: list[int], steps: int) -> list[int]:
    sequence = torch.tensor([ids])
    for _ in range(steps):
        next_token = model(sequence, use_cache=False).logits[0, -1].argmax()
        sequence = torch.cat([sequence, next_token.view(1, 1)], dim=1)
    return sequence[0, len(ids) :].tolist()


@torch.no_grad()
def test_cached_greedy_generation_equals_full_recomputation(tiny_model, tiny_tokenizer):
    distinct_tokens = set()
    for prompt in PROMPTS:
        ids = tiny_tokenizer.encode(prompt)
        generated = tiny_model.generate(
            torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None
        )
        expected = greedy_by_recomputation(tiny_model, ids, 12)
        assert generated[0, len(ids) :].tolist() == expected
        distinct_tokens.update(expected)
    assert len(distinct_tokens) > 3, "the tiny model should not repeat one token, or this test proves little"


@torch.no_grad()
def test_left_padded_batch_generation_equals_one_by_one(tiny_model, tiny_tokenizer):
    batch = tiny_tokenizer(PROMPTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(), "the batch must actually be padded"
    batched = tiny_model.generate(**batch, max_new_tokens=10, do_sample=False, eos_token_id=None)
    for row, prompt in enumerate(PROMPTS):
        ids = tiny_tokenizer.encode(prompt)
        alone = tiny_model.generate(
            torch.tensor([ids]), max_new_tokens=10, do_sample=False, eos_token_id=None
        )
        assert batched[row, -10:].tolist() == alone[0, -10:].tolist()


@torch.no_grad()
def test_padded_rows_get_the_logits_they_get_alone(tiny_model, tiny_tokenizer):
    rows = [tiny_tokenizer.encode(prompt) for prompt in PROMPTS]
    longest = max(map(len, rows))
    left = tiny_tokenizer(PROMPTS, padding=True, return_tensors="pt")
    right = torch.tensor([row + [tiny_tokenizer.pad_token_id] * (longest - len(row)) for row in rows])
    left_logits = tiny_model(**left).logits
    right_logits = tiny_model(right).logits
    for index, row in enumerate(rows):
        alone = tiny_model(torch.tensor([row])).logits[0]
        torch.testing.assert_close(left_logits[index, -len(row) :], alone, atol=1e-4, rtol=0)
        torch.testing.assert_close(right_logits[index, : len(row)], alone, atol=1e-4, rtol=0)


def test_files_in_a_checkpoint_folder_are_never_executed(tiny_model_dir: Path, tmp_path: Path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "executed"
    payload = f"open({str(marker)!r}, 'w').write('ran')\n"
    for name in ("modeling_chatglm.py", "configuration_chatglm.py", "tokenization_chatglm.py", "__init__.py"):
        (folder / name).write_text(payload)
    glmcore.load_model(folder)
    glmcore.load_tokenizer(folder)
    assert not marker.exists()


def test_safetensors_conversion_loads_the_same_weights(tiny_model_dir: Path, tmp_path: Path, tiny_model):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    convert_to_safetensors(folder)
    assert inspect_model_folder(folder).weight_format == "safetensors"
    converted = glmcore.load_model(folder)
    ids = torch.tensor([glmcore.load_tokenizer(folder).encode(PROMPTS[0])])
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, tiny_model(ids).logits, atol=0, rtol=0)


def test_incomplete_or_foreign_folders_are_refused_with_a_reason(tiny_model_dir: Path, tmp_path: Path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "pytorch_model-00003-of-00008.bin").unlink()
    with pytest.raises(GlmError, match="incomplete: missing pytorch_model-00003-of-00008.bin"):
        glmcore.load_model(folder)
    with pytest.raises(GlmError, match="not a model folder"):
        glmcore.load_model(tmp_path)


def test_loss_weights_tokens_across_an_accumulated_batch(tiny_model, tiny_tokenizer):
    """With num_items_in_batch the loss is a sum over this batch divided by the whole batch's label count."""
    ids = torch.tensor([tiny_tokenizer.encode(PROMPTS[0]) + [5, 6, 7]])
    labels = ids.clone()
    labels[:, :4] = -100
    with torch.no_grad():
        mean = tiny_model(ids, labels=labels).loss
        counted = int((labels[:, 1:] != -100).sum())
        summed = tiny_model(ids, labels=labels, num_items_in_batch=torch.tensor(counted * 2)).loss
    torch.testing.assert_close(summed * 2, mean)


def test_training_loss_on_labelled_positions_equals_the_full_logits_loss(tiny_model_dir, tiny_tokenizer):
    """In training the LM head runs only where labels are; the loss must not change."""
    model = glmcore.load_model(tiny_model_dir)
    rows = [tiny_tokenizer.encode(prompt) + [5, 6, 7] for prompt in PROMPTS[:2]]
    longest = max(map(len, rows))
    ids = torch.tensor([row + [tiny_tokenizer.pad_token_id] * (longest - len(row)) for row in rows])
    labels = torch.tensor(
        [[-100] * (len(row) - 4) + row[-4:] + [-100] * (longest - len(row)) for row in rows]
    )
    with torch.no_grad():
        full = model.eval()(ids, labels=labels).loss
        labelled = model.train()(ids, labels=labels).loss
        labelled_weighted = model(ids, labels=labels, num_items_in_batch=torch.tensor(40)).loss
    torch.testing.assert_close(labelled, full)
    counted = int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(labelled_weighted * 40 / counted, full)
