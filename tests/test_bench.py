"""The benchmark suite runs end to end on a toy shape (its numbers mean nothing on a CPU; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_tiny_benchmark_prints_one_json_object_per_figure(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "glmtui.cli",
            "bench",
            "--tiny",
            "--only",
            "ptuning16,decode16,evaluate,evaluate_prefix",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # stdout is JSON lines only (no Trainer dictionaries, no library chatter): each line parses as a figure.
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert all("figure" in record for record in records)
    figures = [record["figure"] for record in records]
    assert figures.count("ptuning_step") == 3  # batch 16, batch 1, batch 1 with recomputation
    assert {"environment", "decode", "batched_evaluation"} <= set(figures)
    evaluations = [record for record in records if record["figure"] == "batched_evaluation"]
    assert [record.get("pre_seq_len") for record in evaluations] == [None, 128]  # without, then with a prefix
    assert all(record["tokens_per_s"] > 0 for record in records if "tokens_per_s" in record)


def test_tiny_benchmark_of_chatglm3_runs_its_decoding_and_a_ptuning_step(tmp_path):
    """`--family chatglm3-6b`: the random checkpoint, the P-tuning step and the decoder are ChatGLM3's."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "glmtui.cli",
            "bench",
            "--family",
            "chatglm3-6b",
            "--tiny",
            "--only",
            "ptuning16,decode16",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"figure"')]
    assert records[0]["figure"] == "environment" and records[0]["family"] == "chatglm3-6b"
    config = json.loads((tmp_path / "chatglm3-6b-random" / "config.json").read_text())
    assert config["multi_query_group_num"] == 2 and config["seq_length"] == 8192
    figures = [record["figure"] for record in records]
    assert figures.count("ptuning_step") == 3 and "decode" in figures
