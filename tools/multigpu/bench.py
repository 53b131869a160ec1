"""Multi-GPU checks of glmtui at ChatGLM-6B's real shape with random weights (issues 8 and 9).

Every run goes through the product's path: RunConfig -> preflight.check -> RunStore.create -> glmcore.runs.launch
(torchrun, one rank per GPU) -> events.jsonl / status.json -> glmcore.runs.stop.

Runs in the order (b)+(c), then (a).

  (a) full fine-tuning, DeepSpeed ZeRO-3, 2 GPUs: steps, tokens/s, per-GPU peak memory; ended by a forced
      stop (a ZeRO-3 checkpoint of 6B parameters is ~90 GB), then no process may be left on either GPU;
  (b) P-tuning v2, 16-bit, batch 16 per GPU, 64+64 tokens, pre_seq_len 128 on 2 GPUs, then on 1 GPU;
  (c) the 2-GPU P-tuning run of (b) is stopped gracefully in the middle: every rank saves and exits, then
      `nvidia-smi --query-compute-apps=pid` must be empty on both GPUs.

Prints one JSON object per line and appends them to OUT/results.jsonl. `--tiny` runs the same logic on the
CPU with the toy shape and two gloo ranks (numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from glmcore import preflight
from glmcore.bench import CHATGLM_6B, SPECIAL_IDS, TINY, write_random_checkpoint
from glmcore.config import RunConfig
from glmcore.distributed import CPU_PROCESSES_VARIABLE
from glmcore.runs import Run, RunStore, launch, stop

RESULTS: Path | None = None
END = float("inf")
"""monotonic() time by which every run must have been stopped (--budget-s)."""
RESERVE_S = 90.0
"""Kept back from the budget for stopping the run in progress and checking the GPUs."""
PROMPT = "类型#上衣*颜色#白色*风格#简约*图案#条纹 " * 6
ANSWER = "这件上衣简约百搭，适合日常穿着。" * 6


def report(figure: str, **values: object) -> dict:
    record = {"figure": figure, **values}
    line = json.dumps(record, ensure_ascii=False)
    print(line, flush=True)
    if RESULTS:
        with open(RESULTS, "a") as handle:
            handle.write(line + "\n")
    return record


def nvidia_smi(*query: str) -> list[list[str]]:
    """Rows of an nvidia-smi query; empty without a driver."""
    if shutil.which("nvidia-smi") is None:
        return []
    output = subprocess.run(
        ["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30
    ).stdout
    return [[cell.strip() for cell in line.split(",")] for line in output.splitlines() if line.strip()]


def compute_pids() -> list[str]:
    return [row[0] for row in nvidia_smi("--query-compute-apps=pid")]


class MemorySampler:
    """Peak memory.used per GPU (MiB) as nvidia-smi sees it, sampled twice a second: every byte a rank holds,
    the CUDA context and NCCL buffers included."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            for index, used in nvidia_smi("--query-gpu=index,memory.used"):
                self.peaks[index] = max(self.peaks.get(index, 0), int(used))
            self._done.wait(0.5)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def gib(self) -> dict[str, float] | None:
        return {index: round(mib / 1024, 2) for index, mib in sorted(self.peaks.items())} or None


def wait_for_step(run: Run, step: int, deadline: float) -> bool:
    deadline = min(deadline, END - RESERVE_S)
    while time.monotonic() < deadline:
        status = run.status()
        if status.step >= step:
            return True
        if not status.is_active:
            return False
        time.sleep(0.5)
    return False


def wait_gpus_empty(timeout: float) -> tuple[bool, float, list[str]]:
    start = time.monotonic()
    pids = compute_pids()
    while pids and time.monotonic() - start < timeout:
        time.sleep(0.5)
        pids = compute_pids()
    return not pids, round(time.monotonic() - start, 1), pids


def throughput(run: Run, warmup_step: int) -> dict:
    logs = [event for event in run.events() if event["kind"] == "log" and event["step"] > warmup_step]
    rates = [event["tokens_per_s"] for event in logs if event.get("tokens_per_s")]
    return {
        "measured_steps": [logs[0]["step"], logs[-1]["step"]] if logs else None,
        "log_events": len(logs),
        "tokens_per_s": round(sum(rates) / len(rates), 1) if rates else None,
        "rank0_peak_reserved_GiB": logs[-1]["gpu_memory_gib"] if logs else None,
        "loss_last": logs[-1]["loss"] if logs else None,
    }


def keep_logs(run: Run, phase: str, out: Path) -> None:
    """The last lines of the agent's and each rank's log, in one file, for a phase that went wrong."""
    parts = []
    for path in sorted(run.path.glob("train*.log")):
        lines = path.read_text(errors="replace").splitlines()[-150:]
        parts.append(f"===== {path.name}\n" + "\n".join(lines))
    (out / f"{phase}-logs.txt").write_text("\n".join(parts) + "\n")


def random_model(workdir: Path, tiny: bool) -> Path:
    """ChatGLM-6B's shape (or the toy one) with random weights, in safetensors, whose special ids are the
    tiny tokenizer's, so the product's own data path (tokenizer -> collator) feeds it."""
    from glmcore.models.checkpoint import convert_to_safetensors

    folder = workdir / "chatglm-6b-random"
    started = time.perf_counter()
    write_random_checkpoint(folder, TINY if tiny else CHATGLM_6B)
    config = json.loads((folder / "config.json").read_text())
    config.update(SPECIAL_IDS)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    convert_to_safetensors(folder)
    for shard in folder.glob("pytorch_model*"):
        shard.unlink()
    report(
        "random_checkpoint", seconds=round(time.perf_counter() - started, 1), shape="tiny" if tiny else "6b"
    )
    return folder


def make_run(store: RunStore, name: str, model: Path, data: Path, gpus: list[int], **settings: object) -> Run:
    config = RunConfig(
        name=name,
        model_path=model,
        train_file=data,
        max_source_length=64,
        max_target_length=64,
        save_steps=10**6,
        gpus=gpus,
        **settings,
    )
    problems = [str(problem) for problem in preflight.check(config, runs_dir=store.runs_dir)]
    if problems:
        raise RuntimeError("; ".join(problems))
    return store.create(config)


def phase_full(
    store: RunStore, model: Path, data: Path, args: argparse.Namespace, out: Path, ranks: int, stage: int
) -> None:
    """Full fine-tuning at the published settings (batch 4 per GPU, lr 1e-4) under ZeRO ``stage``, force-stopped
    (a graceful stop would write a ZeRO checkpoint of ~90 GB)."""
    figure = f"full_zero{stage}"
    gpus = [] if args.tiny else list(range(ranks))
    if args.tiny:
        os.environ[CPU_PROCESSES_VARIABLE] = str(ranks)
    try:
        run = make_run(
            store,
            f"full-zero{stage}-{ranks}gpu",
            model,
            data,
            gpus,
            method="full",
            quantization_bit=16,
            deepspeed=f"zero{stage}",
            per_device_train_batch_size=4,
            gradient_accumulation_steps=1,
            learning_rate=1e-4,
            max_steps=10**4,
            logging_steps=2,
        )
    except RuntimeError as error:
        report(figure, gpus=ranks, error=str(error))
        return
    with MemorySampler() as memory:
        started = time.monotonic()
        agent = launch(run, detach=True)
        reached = wait_for_step(run, args.zero_steps, started + args.phase_s)
        result = throughput(run, warmup_step=2)
        forced = stop(run, force=True, grace=15)
    empty, seconds, left = wait_gpus_empty(60)
    report(
        figure,
        gpus=ranks,
        per_device_batch=4,
        seq=128,
        reached_step=reached,
        final_state=forced.state,
        agent_pid=agent,
        peak_memory_used_GiB=memory.gib(),
        **result,
        seconds=round(time.monotonic() - started, 1),
        gpus_empty_after_force_stop=empty,
        seconds_to_empty=seconds,
        left_pids=left,
    )
    if not reached or not empty:
        keep_logs(run, f"zero{stage}-{ranks}gpu", out)


def phase_ptuning(
    store: RunStore, model: Path, data: Path, args: argparse.Namespace, out: Path, ranks: int
) -> float | None:
    gpus = [] if args.tiny else list(range(ranks))
    if args.tiny:
        os.environ[CPU_PROCESSES_VARIABLE] = str(ranks)
    run = make_run(
        store,
        f"ptuning-{ranks}gpu",
        model,
        data,
        gpus,
        method="ptuning-v2",
        quantization_bit=16,
        pre_seq_len=128,
        per_device_train_batch_size=16,
        gradient_accumulation_steps=1,
        learning_rate=2e-2,
        max_steps=10**4,
        logging_steps=5,
    )
    with MemorySampler() as memory:
        started = time.monotonic()
        launch(run, detach=True)
        reached = wait_for_step(run, args.ptuning_steps, started + args.phase_s)
        result = throughput(run, warmup_step=5)
        # (c): a graceful stop in the middle: every rank agrees on the step, saves and exits.
        status = stop(run, timeout=120)
        if status.is_active:
            status = stop(run, force=True, grace=15)
    empty, seconds, left = wait_gpus_empty(60)
    rank_ends = []
    for rank in range(ranks):
        path = run.path / (f"train.rank-{rank}.log" if ranks > 1 else "train.log")
        rank_ends += [line for line in path.read_text(errors="replace").splitlines() if " at step " in line][
            -1:
        ]
    checkpoint = run.latest_checkpoint()
    report(
        "ptuning16",
        gpus=ranks,
        per_device_batch=16,
        seq=128,
        pre_seq_len=128,
        reached_step=reached,
        **result,
        peak_memory_used_GiB=memory.gib(),
        stop_state=status.state,
        stop_step=status.step,
        checkpoint=checkpoint.path.name if checkpoint else None,
        rank_ends=rank_ends,
        gpus_empty_after_stop=empty,
        seconds_to_empty=seconds,
        left_pids=left,
        seconds=round(time.monotonic() - started, 1),
    )
    if not reached or not empty or status.state != "stopped":
        keep_logs(run, f"ptuning{ranks}", out)
    return result["tokens_per_s"]


def guarded(figure: str, phase, *args: object) -> object:
    """Run one phase; an error is reported as that figure's result and the next phase still runs."""
    try:
        return phase(*args)
    except Exception as error:
        report(figure, error=f"{type(error).__name__}: {error}")
        return None


def main() -> int:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy shape, two gloo ranks on the CPU")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--only", default="ptuning,full", help="comma-separated: ptuning, full")
    parser.add_argument(
        "--full",
        default="2:3",
        help="full fine-tuning runs as GPUS:ZERO_STAGE, comma-separated (issue 9: 2:2,4:2,2:3,4:3)",
    )
    parser.add_argument("--zero-steps", type=int, default=10)
    parser.add_argument("--ptuning-steps", type=int, default=40)
    parser.add_argument("--phase-s", type=float, default=150.0, help="longest wait for one run's steps")
    parser.add_argument("--budget-s", type=float, default=480.0, help="all runs stopped by then")
    args = parser.parse_args()
    global END
    END = time.monotonic() + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    RESULTS = args.out / "results.jsonl"
    import torch
    import transformers

    try:
        import deepspeed

        deepspeed_version = deepspeed.__version__
    except ImportError:
        deepspeed_version = None
    report(
        "environment",
        python=sys.version.split()[0],
        torch=torch.__version__,
        transformers=transformers.__version__,
        deepspeed=deepspeed_version,
        gpus=[row for row in nvidia_smi("--query-gpu=index,name,memory.total")],
        compute_pids_before=compute_pids(),
    )
    workdir = Path(tempfile.mkdtemp(prefix="glmtui-mgpu-"))
    try:
        model = random_model(workdir, args.tiny)
        data = workdir / "train.json"
        # 512 equal rows: every batch is full (16 per GPU on 2 GPUs, 4 per GPU under ZeRO-3).
        data.write_text((json.dumps({"content": PROMPT, "summary": ANSWER}, ensure_ascii=False) + "\n") * 512)
        store = RunStore(workdir / "runs")
        wanted = set(args.only.split(","))
        if "ptuning" in wanted:
            two = guarded("ptuning16", phase_ptuning, store, model, data, args, args.out, 2)
            one = guarded("ptuning16", phase_ptuning, store, model, data, args, args.out, 1)
            report(
                "ptuning16_scaling",
                two_gpus_tokens_per_s=two,
                one_gpu_tokens_per_s=one,
                scaling=round(two / one, 3) if two and one else None,
                target=1.8,
            )
        # Last: the scaling figures come back even if ZeRO-3 takes the rest of the time.
        for spec in args.full.split(",") if "full" in wanted else []:
            ranks, stage = (int(part) for part in spec.split(":"))
            if time.monotonic() < END - 2 * RESERVE_S:
                guarded(f"full_zero{stage}", phase_full, store, model, data, args, args.out, ranks, stage)
    finally:
        # A run cut short by an error here must not outlive the script (runs are detached on purpose).
        for run in RunStore(workdir / "runs").list():
            if run.status().is_active:
                report("cleanup", run=run.id, state=stop(run, force=True, grace=5).state)
        shutil.rmtree(workdir, ignore_errors=True)
    report("done", compute_pids_after=compute_pids())
    return 0


if __name__ == "__main__":
    sys.exit(main())
