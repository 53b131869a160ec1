"""`glmtui export`: LoRA and full fine-tuning runs become model folders that load like any other."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from test_train import make_config

import glmcore
from glmcore.errors import GlmError
from glmcore.runs import RunStore
from glmcore.train import train


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.json"
    path.write_text(
        '{"content": "类型#上衣*颜色#白色", "summary": "白色上衣简约百搭"}\n' * 8, encoding="utf-8"
    )
    return path


def trained_run(tmp_path, model_dir, data_file, method: str):
    overrides = {"lora": {"learning_rate": 5e-2, "lora_rank": 4}, "full": {"learning_rate": 2e-3}}.get(
        method, {}
    )
    run = RunStore(tmp_path / "runs").create(
        make_config(model_dir, data_file, method=method, max_steps=4, save_steps=4, **overrides)
    )
    run.mark_running(os.getpid())
    train(run, resume=False)
    return run


@pytest.mark.parametrize("method", ["lora", "full"])
def test_an_exported_run_loads_with_the_trained_behaviour(
    tiny_model_dir, tiny_tokenizer, data_file, tmp_path, method
):
    run = trained_run(tmp_path, tiny_model_dir, data_file, method)
    destination = tmp_path / "exported"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "glmtui.cli",
            "--workspace",
            str(tmp_path),
            "export",
            run.id,
            "--to",
            str(destination),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    exported = glmcore.load_model(destination)
    base = glmcore.load_model(tiny_model_dir)
    ids = torch.tensor([tiny_tokenizer.encode("类型#上衣*颜色#白色")])
    with torch.no_grad():
        assert (exported(ids).logits - base(ids).logits).abs().max() > 1e-3, (
            "training must show in the export"
        )
        if method == "lora":
            from peft import PeftModel

            adapted = PeftModel.from_pretrained(
                glmcore.load_model(tiny_model_dir), str(run.latest_checkpoint().path)
            )
            torch.testing.assert_close(exported(ids).logits, adapted(input_ids=ids).logits, atol=1e-4, rtol=0)
    assert glmcore.load_tokenizer(destination).encode("白色") == tiny_tokenizer.encode("白色")


def test_a_p_tuning_run_is_not_exported_but_explained(tiny_model_dir, data_file, tmp_path):
    from glmcore.export import export_run

    run = trained_run(tmp_path, tiny_model_dir, data_file, "ptuning-v2")
    with pytest.raises(GlmError, match="use its checkpoints directly"):
        export_run(run, tmp_path / "exported")
