"""The benchmark suite: a model family at its real shape with random weights, through the product's code paths.

`python -m glmcore.bench [--family NAME] [--tiny] [--only NAME,...]
[--workdir DIR]` prints one JSON object per figure:
the card, library versions, settings and value. Tokens/s count real tokens (these rows have no padding);
peak memory is `torch.cuda.max_memory_allocated()`. The card's copy bandwidth is measured in the same run,
for the decoding bound. `--tiny` runs a toy shape (CI may smoke-run it on the CPU); its numbers mean
nothing. docs/benchmarks.md keeps the results with the card each was measured on.

Figures: `bandwidth`, `ptuning16` (16-bit P-tuning steps at batch 16 and 1), `ptuning4` (NF4 at batch
1 × accumulation 16 and batch 16), `decode16` / `decode4` (batch 1, 64-token prompt, 128 new tokens),
`evaluate` (1,070 prompts of 64 tokens, 64 new tokens, greedy; `evaluate_prefix` the same through a fresh
P-tuning prefix of 128 tokens, as a P-tuning checkpoint is evaluated), `load` (folder to first token, from the
published `.bin` shards and from safetensors), `vram` (three runs against the estimate, one at a time) and
`vramgrid` ({4, 8, 16-bit} × {batch 1 × 16, batch 16} × {P-tuning v2, LoRA}, 3 processes a cell), and
`serve` (16-bit and NF4: output tokens/s and time to first token of 1, 8, 32 and 128 concurrent streaming requests of
64-token prompts and 128 new tokens through `glmtui serve`'s engine, beside the single-request decoder's (with
`bandwidth`, each load against its weights-plus-cache bound); then
`serve_mixed`: 32 clients over 4 random LoRA adapters (rank 8), 4 random prefixes (16 tokens) and the base,
against 32 clients of the base alone on the same engine, and at 16 bits `lora_numerics`: one adapter's row
against the model with that adapter merged into its weights). `decode4i` / `serve4i` (the optional int4
backend, `pip install 'glmtui[int4]'`): int4's and NF4's logits against 16-bit's, then `decode4` and `serve`
with torchao's int4 weights (`int4_figures`; among the default figures only where torchao is installed).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from glmcore.config import RunConfig
from glmcore.models import DEFAULT_FAMILY, FAMILIES, ModelFamily, family_named
from glmcore.models.family import family_for
from glmcore.quiet import quiet_libraries
from glmcore.units import GIB

SOURCE, TARGET, PRE_SEQ_LEN = 64, 64, 128


@dataclass(frozen=True)
class BenchModel:
    """The random checkpoint the bench measures: its config.json and the special ids its rows are made of."""

    family: ModelFamily
    config: dict
    special_ids: dict[str, int]


def bench_model(family: ModelFamily, tiny: bool) -> BenchModel:
    """`family` at its published shape, or at its toy sizes (`--tiny`)."""
    if tiny:
        return BenchModel(family, dict(family.tiny_config), dict(family.tiny_special_ids))
    return BenchModel(family, family.published_config(), dict(family.special_ids))


def versions() -> dict:
    import torch
    import transformers

    try:
        import bitsandbytes

        bnb = bitsandbytes.__version__
    except ImportError:
        bnb = None
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {
        "card": card,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "bitsandbytes": bnb,
    }


def report(figure: str, **values) -> dict:
    record = {"figure": figure, **values}
    print(json.dumps(record), flush=True)
    return record


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / GIB, 2) if torch.cuda.is_available() else None


def reset_peak() -> float | None:
    """Starts a new peak; returns what is still allocated (GiB), which the new peak includes: a figure run after
    others in one process reports it, so that what an earlier figure left behind is told from its own memory."""
    import torch

    if not torch.cuda.is_available():
        return None
    gc.collect()  # what a finished figure left in reference cycles is not counted in the next one
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return round(torch.cuda.memory_allocated() / GIB, 2)


# --- a random checkpoint at the real shape, in the published layout -----------------------------------


def write_random_checkpoint(folder: Path, model: BenchModel) -> Path:
    """A random checkpoint of `model` in its family's published layout (`write_random_checkpoint` there)."""
    return model.family.implementation().write_random_checkpoint(folder, model.config)


# --- figures ------------------------------------------------------------------------------------------


def bandwidth() -> float | None:
    """Device copy bandwidth in bytes/s, counting read and write (the anchors' convention)."""
    import torch

    if not torch.cuda.is_available():
        return None
    source = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    synchronize()
    start = time.perf_counter()
    for _ in range(10):
        target.copy_(source)
    synchronize()
    rate = 2 * source.numel() * 10 / (time.perf_counter() - start)
    del source, target
    return rate


def training_row(ids: dict[str, int]) -> tuple[list[int], list[int]]:
    row = list(range(10, 10 + SOURCE - 1)) + [ids["gmask_token_id"], ids["bos_token_id"]]
    row += list(range(20, 20 + TARGET - 2)) + [ids["eos_token_id"]]
    labels = [-100] * SOURCE + row[SOURCE:]
    return row, labels


def ptuning_steps(
    model_dir: Path,
    ids: dict[str, int],
    bits: int,
    batch: int,
    accumulation: int,
    steps: int,
    checkpointing: bool | None = None,
    callbacks: list | None = None,
) -> dict:
    """Optimizer steps through the product's Trainer setup; time and peak over the steps after warm-up."""
    import torch
    from transformers import PrinterCallback, TrainerCallback

    from glmcore.data import TrainingCollator
    from glmcore.estimate import ModelShape, resolve_gradient_checkpointing
    from glmcore.train import free_gpu_memory, prepare_model, trainer_class, training_arguments

    config = RunConfig(
        name="bench",
        model_path=model_dir,
        train_file=model_dir / "config.json",
        quantization_bit=bits,
        pre_seq_len=PRE_SEQ_LEN,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=steps + 2,
        save_steps=10**6,
        logging_steps=10**6,
        max_source_length=SOURCE,
        max_target_length=TARGET,
        gpus=[0] if torch.cuda.is_available() else [],
        gradient_checkpointing=checkpointing,
    )
    checkpointing = resolve_gradient_checkpointing(
        ModelShape.from_model_dir(model_dir), config, free_bytes=free_gpu_memory()
    )
    reset_peak()
    model = prepare_model(config)
    row, labels = training_row(ids)
    dataset = [{"input_ids": row, "labels": labels}] * (batch * accumulation * (steps + 2))
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                synchronize()
                reset_peak()
                times.append(time.perf_counter())

        def on_train_end(self, args, state, control, **kwargs):
            synchronize()
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as output:
        trainer = trainer_class("ptuning-v2")(
            model=model,
            args=training_arguments(config, Path(output), checkpointing),
            train_dataset=dataset,
            data_collator=TrainingCollator(ids["pad_token_id"]),
            callbacks=[StepTimer(), *(callbacks or [])],
        )
        trainer.remove_callback(PrinterCallback)  # its dicts would break the one-JSON-object-per-line output
        trainer.args.save_strategy = "no"
        trainer.args.include_num_input_tokens_seen = "all"  # no padding in these rows
        trainer.train()
    seconds = (times[1] - times[0]) / steps
    tokens = batch * accumulation * len(row)
    del trainer, model
    return {
        "bits": bits,
        "batch": batch,
        "accumulation": accumulation,
        "seq": len(row),
        "pre_seq_len": PRE_SEQ_LEN,
        "gradient_checkpointing": checkpointing,
        "s_per_step": round(seconds, 4),
        "tokens_per_s": round(tokens / seconds, 1),
        "peak_GiB": peak_gib(),
    }


def decoding(
    model, ids: dict[str, int], batch: int, prompt_length: int, new_tokens: int, repeat: int = 3
) -> float:
    """Generated tokens/s of the static decoder, after a warm-up run that captures its graph."""
    from glmcore.generation import generate, new_decoder

    prompt = list(range(10, 10 + prompt_length - 2)) + [ids["gmask_token_id"], ids["bos_token_id"]]
    decoder = new_decoder(model, batch, prompt_length + new_tokens)

    def run() -> None:
        generate(
            model,
            [prompt] * batch,
            max_new_tokens=new_tokens,
            eos_token_id=-1,
            pad_token_id=3,
            decoder=decoder,
        )

    run()
    synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        run()
    synchronize()
    rate = batch * new_tokens * repeat / (time.perf_counter() - start)
    decoding.graph_error = decoder.graph_error
    decoding.step_ms = {"eager": step_milliseconds(decoder._step_eagerly)}
    if decoder.graph is not None:
        decoding.step_ms["graph"] = step_milliseconds(decoder.graph.replay)
    return rate


def step_milliseconds(step: Callable[[], object], repeat: int = 20) -> float:
    step()
    synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        step()
    synchronize()
    return round(1000 * (time.perf_counter() - start) / repeat, 3)


def batched_evaluation(model, ids: dict[str, int], examples: int, batch: int, new_tokens: int) -> dict:
    """1,070 greedy generations in batches, one captured graph reused by every batch (the last padded)."""
    import torch

    from glmcore.generation import generate, new_decoder

    generator = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(10, 900, (SOURCE - 2,), generator=generator).tolist()
        + [ids["gmask_token_id"], ids["bos_token_id"]]
        for _ in range(examples)
    ]
    decoder = new_decoder(model, batch, SOURCE + new_tokens)
    generate(
        model, prompts[:batch], max_new_tokens=new_tokens, eos_token_id=-1, pad_token_id=3, decoder=decoder
    )
    synchronize()
    start = time.perf_counter()
    produced = 0
    for first in range(0, examples, batch):
        chunk = prompts[first : first + batch]
        real = len(chunk)
        chunk += [chunk[-1]] * (batch - real)
        outputs = generate(
            model, chunk, max_new_tokens=new_tokens, eos_token_id=-1, pad_token_id=3, decoder=decoder
        )
        produced += sum(len(output) for output in outputs[:real])
    synchronize()
    seconds = time.perf_counter() - start
    return {
        "examples": examples,
        "batch": batch,
        "new_tokens": new_tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(produced / seconds, 1),
    }


def load_to_first_token(model_dir: Path, ids: dict[str, int]) -> float:
    from glmcore.generation import generate
    from glmcore.models.loading import load_model

    synchronize()
    start = time.perf_counter()
    model = load_model(model_dir)
    generate(
        model,
        [[10, 11, ids["gmask_token_id"], ids["bos_token_id"]]],
        max_new_tokens=1,
        eos_token_id=-1,
        pad_token_id=3,
    )
    synchronize()
    seconds = time.perf_counter() - start
    del model
    reset_peak()
    return seconds


def prompt_repeats_keeping_an_answer(model_dir: Path, text: str, wanted_labels: int = 48) -> int:
    """How often `text` can fill the prompt (8 at most) while the row keeps `wanted_labels` answer tokens.

    ChatGLM-6B and ChatGLM2-6B cut prompt and answer to 64 tokens each; ChatGLM3-6B cuts the whole
    conversation to 129, so a prompt that fills it leaves no answer and a loss of NaN.
    """
    from glmcore.data import IGNORE_INDEX, Example, training_features
    from glmcore.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    for repeats in range(8, 0, -1):
        labels = training_features(tokenizer, Example(text * repeats, text * 8), 64, 64)["labels"]
        if sum(label != IGNORE_INDEX for label in labels) >= wanted_labels:
            return repeats
    return 1


def vram_run_config(
    model_dir: Path, workdir: Path, method: str, bits: int, batch: int, accumulation: int, *, name: str
) -> RunConfig:
    """A 4-step run of `method` over 64 rows that fill 64+64 tokens, for measuring memory against the estimate."""
    import torch

    data = workdir / f"vram-train-{family_for(model_dir)[0].name}.json"
    if not data.is_file():
        text = "类型#上衣*材质#牛仔布*颜色#白色*风格#简约 "
        row = {"content": text * prompt_repeats_keeping_an_answer(model_dir, text), "summary": text * 8}
        data.write_text("\n".join(json.dumps(row, ensure_ascii=False) for _ in range(64)), "utf-8")
    return RunConfig(
        name=f"{name}-{bits}bit-b{batch}x{accumulation}",
        method=method,
        model_path=model_dir,
        train_file=data,
        quantization_bit=bits,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=4,
        save_steps=1000,
        logging_steps=1,
        gpus=[0] if torch.cuda.is_available() else [],
    )


def measured_vram(model_dir: Path, workdir: Path, bits: int, batch: int, accumulation: int) -> dict:
    """A real detached-style run (its own process) sampled through NVML, against the estimate.

    The figure is what nvidia-smi shows for the training process (PyTorch's reserved memory plus the CUDA
    context), the quantity the VRAM estimate models.
    """
    import threading

    from glmcore.estimate import ModelShape, estimate_vram
    from glmcore.gpu import read_gpus
    from glmcore.runs import RunStore, launch

    config = vram_run_config(model_dir, workdir, "ptuning-v2", bits, batch, accumulation, name="vram")
    from glmcore.train import free_gpu_memory

    estimate = estimate_vram(ModelShape.from_model_dir(model_dir), config, free_bytes=free_gpu_memory())
    run = RunStore(workdir / "runs").create(config)
    process = launch(run, detach=False)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            snapshot = read_gpus()
            for gpu in snapshot.gpus:
                for holder in gpu.processes:
                    if holder.pid == process.pid and holder.used_memory:
                        peak = max(peak, holder.used_memory)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    process.wait()
    done.set()
    sampler.join()
    measured = peak / GIB
    total = estimate.total / GIB
    return {
        "bits": bits,
        "batch": batch,
        "accumulation": accumulation,
        "state": run.status().state,
        "gradient_checkpointing": estimate.gradient_checkpointing,
        "measured_nvml_GiB": round(measured, 2),
        "estimated_GiB": round(total, 2),
        "error": round((total - measured) / measured, 3) if measured else None,
        "parts_GiB": {name: round(size / GIB, 2) for name, size in estimate.parts.items()},
    }


GRID_CELLS = tuple(
    (method, bits, batch, accumulation)
    for method in ("ptuning-v2", "lora")
    for bits in (4, 8, 16)
    for batch, accumulation in ((1, 16), (16, 1))
)


def vram_grid(
    model_dir: Path,
    workdir: Path,
    repeats: int = 3,
    budget_gib: float = 96,
    methods: tuple[str, ...] = ("ptuning-v2", "lora"),
) -> list[dict]:
    """Each grid cell as `repeats` real training processes, several at once, against the estimate.

    A cell's figure is the largest NVML used memory of its processes (one reading moves by a few percent with
    the allocator's history). Processes start while the estimates of those running stay under `budget_gib`,
    so each one still finds more free memory than its own estimate: the automatic recomputation choice is the
    one it makes on an idle card.
    """
    import threading

    import torch

    from glmcore.estimate import ModelShape, estimate_vram
    from glmcore.gpu import read_gpus
    from glmcore.runs import RunStore, launch

    shape = ModelShape.from_model_dir(model_dir)
    total_bytes = torch.cuda.mem_get_info()[1] if torch.cuda.is_available() else None
    queue = []
    for method, bits, batch, accumulation in GRID_CELLS:
        if method not in methods:
            continue
        if bits == 8 and not torch.cuda.is_available():
            continue  # LLM.int8 needs a GPU
        config = vram_run_config(model_dir, workdir, method, bits, batch, accumulation, name=f"grid-{method}")
        estimate = estimate_vram(shape, config, free_bytes=total_bytes)
        queue += [(config, estimate)] * repeats
    peaks: dict[int, int] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for gpu in read_gpus().gpus:
                for holder in gpu.processes:
                    if holder.used_memory:
                        peaks[holder.pid] = max(peaks.get(holder.pid, 0), holder.used_memory)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    store = RunStore(workdir / "grid-runs")
    running: list[tuple] = []
    finished: list[tuple] = []
    while queue or running:
        for entry in [entry for entry in running if entry[2].poll() is not None]:
            running.remove(entry)
            finished.append(entry)
            config, estimate, process, run = entry
            report(  # one line per process as it ends, so a cut-short grid still leaves its readings
                "vram_process",
                run=run.path.name,
                state=run.status().state,
                measured_nvml_GiB=round(peaks.get(process.pid, 0) / GIB, 3),
                estimated_GiB=round(estimate.total / GIB, 3),
            )
        in_use = sum(estimate.total for _, estimate, _, _ in running) / GIB
        if queue and (not running or in_use + queue[0][1].total / GIB <= budget_gib):
            config, estimate = queue.pop(0)
            run = store.create(config)
            running.append((config, estimate, launch(run, detach=False), run))
            time.sleep(2)
        else:
            time.sleep(0.5)
    done.set()
    sampler.join()
    cells: dict[tuple, dict] = {}
    for config, estimate, process, run in finished:
        key = (
            config.method,
            config.quantization_bit,
            config.per_device_train_batch_size,
            config.gradient_accumulation_steps,
        )
        cell = cells.setdefault(key, {"estimate": estimate, "measured": [], "states": []})
        cell["measured"].append(peaks.get(process.pid, 0))
        cell["states"].append(run.status().state)
    results = []
    for (method, bits, batch, accumulation), cell in cells.items():
        measured = max(cell["measured"]) / GIB
        total = cell["estimate"].total / GIB
        results.append(
            {
                "method": method,
                "bits": bits,
                "batch": batch,
                "accumulation": accumulation,
                "states": cell["states"],
                "gradient_checkpointing": cell["estimate"].gradient_checkpointing,
                "measured_nvml_GiB": [round(value / GIB, 3) for value in cell["measured"]],
                "largest_GiB": round(measured, 3),
                "estimated_GiB": round(total, 3),
                "error": round((total - measured) / measured, 3) if measured else None,
                "parts_GiB": {name: round(size / GIB, 3) for name, size in cell["estimate"].parts.items()},
            }
        )
    return results


def single_request(model, ids: dict[str, int], prompt_length: int, new_tokens: int, repeat: int = 3) -> dict:
    """glmtui's own single-request decoding (the static decoder chat uses): time to first token, tokens/s."""
    import torch

    from glmcore.generation import new_decoder

    prompt = list(range(10, 10 + prompt_length - 2)) + [ids["gmask_token_id"], ids["bos_token_id"]]
    decoder = new_decoder(model, 1, prompt_length + new_tokens)
    input_ids = torch.tensor([prompt], device=decoder.device)
    firsts, rates = [], []
    for attempt in range(repeat + 1):  # the first run captures the graph
        synchronize()
        start = time.perf_counter()
        first = None
        for step, token in enumerate(
            decoder.decode(input_ids, torch.ones_like(input_ids), new_tokens, eos_token_id=-1)
        ):
            token.item()  # a streaming client gets each token as it is made
            if step == 0:
                first = time.perf_counter() - start
        elapsed = time.perf_counter() - start
        if attempt:
            firsts.append(first)
            rates.append(new_tokens / elapsed)
    return {"first_token_ms": round(1000 * min(firsts), 1), "tokens_per_s": round(max(rates), 1)}


def serve_load(
    model,
    ids: dict[str, int],
    clients: int,
    prompt_length: int,
    new_tokens: int,
    engine,
    sources: list[tuple[Path | None, Path | None]] = [(None, None)],  # noqa: B006 (never changed)
) -> dict:
    """`clients` requests sent at once to the serving engine (continuous batching); each streams its tokens.
    Client i asks for `sources[i % len(sources)]`: (prefix checkpoint, LoRA checkpoint), both None for the base.

    Output tokens/s counts every client's tokens over the wall time from the first request to the last token;
    time to first token is each client's, from when all were sent.
    """
    import threading

    from glmcore.serve.batching import Request

    prompt = list(range(10, 10 + prompt_length - 2)) + [ids["gmask_token_id"], ids["bos_token_id"]]
    ended = threading.Semaphore(0)
    ends: list[float] = []

    def deliver(kind: str, value: object) -> None:  # on the engine thread: never blocks
        if kind != "token":
            ends.append(time.monotonic())
            ended.release()

    requests = [
        Request(list(prompt), prefix, new_tokens, deliver, adapter=adapter)
        for prefix, adapter in (sources[index % len(sources)] for index in range(clients))
    ]
    start = time.monotonic()
    for request in requests:
        engine.submit(request)
    for _ in requests:
        ended.acquire()
    wall = max(ends) - start
    tokens = sum(request.generated for request in requests)
    firsts = sorted(request.first_token_at - start for request in requests)
    return {
        "clients": clients,
        "output_tokens_per_s": round(tokens / wall, 1),
        "per_client_tokens_per_s": round(new_tokens / wall, 1),
        "first_token_ms_median": round(1000 * firsts[len(firsts) // 2], 1),
        "first_token_ms_max": round(1000 * firsts[-1], 1),
        "tokens": tokens,
    }


SERVE_CLIENTS = (1, 8, 32, 128)


def serving(
    model, ids: dict[str, int], bits: int, prompt_length: int, new_tokens: int, bandwidth: float | None
) -> list[dict]:
    """The `serve` figure at `bits`: the single-request baseline, then 1, 8, 32 and 128 concurrent clients. With
    the card's copy `bandwidth`, each load's weights-plus-cache bound: every step reads the weights once and each
    row's keys and values (on average prompt + half the new tokens), so clients × bandwidth ÷ those bytes."""
    from glmcore.adapters import model_compute_dtype
    from glmcore.serve.batching import Engine, kv_bytes_per_token

    baseline = single_request(model, ids, prompt_length, new_tokens)
    weight_bytes = stored_bytes(model)
    cache_bytes_per_row = (prompt_length + new_tokens / 2) * kv_bytes_per_token(model, model_compute_dtype(model))
    engine = Engine(
        model, None, slots=max(SERVE_CLIENTS), capacity=prompt_length + new_tokens, stop_ids=set()
    )
    results = []
    try:
        for clients in SERVE_CLIENTS:
            serve_load(model, ids, clients, prompt_length, new_tokens, engine)  # captures this width's graph
            figures = serve_load(model, ids, clients, prompt_length, new_tokens, engine)
            extra = {}
            if bandwidth:
                bound = clients * bandwidth / (weight_bytes + clients * cache_bytes_per_row)
                extra = {
                    "weights_plus_cache_bound_tokens_per_s": round(bound, 1),
                    "share_of_bound": round(figures["output_tokens_per_s"] / bound, 3),
                }
            results.append(
                {
                    "bits": bits,
                    "prompt": prompt_length,
                    "new_tokens": new_tokens,
                    **figures,
                    **extra,
                    "single_request_tokens_per_s": baseline["tokens_per_s"],
                    "single_request_first_token_ms": baseline["first_token_ms"],
                    "graphs": sorted(engine.decoder.graphs),
                    "rows": engine.slots,
                    "blocks": engine.blocks,
                    "peak_GiB": peak_gib(),
                }
            )
    finally:
        engine.shutdown()
    return results


MIXED_ADAPTERS, MIXED_PREFIXES, MIXED_RANK, MIXED_PREFIX_LENGTH = 4, 4, 8, 16


def random_adapters(model, folder: Path, count: int, rank: int) -> list[Path]:
    """`count` LoRA checkpoints in PEFT's layout over `model`'s query_key_value layers, random A and B (scaled
    as a trained adapter's are: small updates)."""
    import torch
    from safetensors.torch import save_file

    layers = {
        name: (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if name.endswith("query_key_value")
    }
    checkpoints = []
    for index in range(count):
        generator = torch.Generator().manual_seed(index)
        tensors = {}
        for name, (inputs, outputs) in layers.items():
            tensors[f"base_model.model.{name}.lora_A.weight"] = torch.randn(rank, inputs, generator=generator) / 64
            tensors[f"base_model.model.{name}.lora_B.weight"] = torch.randn(outputs, rank, generator=generator) / 64
        checkpoint = folder / f"adapter-{index}"
        checkpoint.mkdir(parents=True)
        save_file(tensors, str(checkpoint / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = {"peft_type": "LORA", "r": rank, "lora_alpha": 4 * rank, "target_modules": ["query_key_value"]}
        (checkpoint / "adapter_config.json").write_text(json.dumps(config))
        checkpoints.append(checkpoint)
    return checkpoints


def random_prefixes(model, folder: Path, count: int, length: int) -> list[Path]:
    """`count` P-tuning checkpoints of `length` tokens, freshly initialised prefix encoders of `model`."""
    import torch

    from glmcore.prefix import PrefixSpec, save_prefix_checkpoint, set_prefix

    checkpoints = []
    for index in range(count):
        torch.manual_seed(index)
        set_prefix(model, PrefixSpec(length, False))
        try:
            checkpoints.append(save_prefix_checkpoint(model, folder / f"prefix-{index}"))
        finally:
            set_prefix(model, None)
    return checkpoints


def mixed_serving(
    model, ids: dict[str, int], bits: int, prompt_length: int, new_tokens: int, folder: Path
) -> dict:
    """32 clients over 4 LoRA adapters, 4 prefixes and the base in the same steps (continuous batching), against
    32 clients of the base alone on the same engine: `versus_base_only` is the issue's ≥ 0.8 target."""
    from glmcore.serve.batching import Engine

    adapters = random_adapters(model, folder, MIXED_ADAPTERS, MIXED_RANK)
    prefixes = random_prefixes(model, folder, MIXED_PREFIXES, MIXED_PREFIX_LENGTH)
    sources = [(None, None), *((prefix, None) for prefix in prefixes), *((None, adapter) for adapter in adapters)]
    capacity = MIXED_PREFIX_LENGTH + prompt_length + new_tokens
    engine = Engine(model, None, slots=32, capacity=capacity, stop_ids=set())
    try:
        figures = {}
        for name, load in (("base_only", [(None, None)]), ("mixed", sources)):
            serve_load(model, ids, 32, prompt_length, new_tokens, engine, load)  # graphs, adapters, prefixes
            figures[name] = serve_load(model, ids, 32, prompt_length, new_tokens, engine, load)
    finally:
        engine.shutdown()
    return {
        "bits": bits,
        "prompt": prompt_length,
        "new_tokens": new_tokens,
        "load": f"{MIXED_ADAPTERS} LoRA (rank {MIXED_RANK}) + {MIXED_PREFIXES} prefixes + base",
        **figures["mixed"],
        "base_only_tokens_per_s": figures["base_only"]["output_tokens_per_s"],
        "versus_base_only": round(
            figures["mixed"]["output_tokens_per_s"] / figures["base_only"]["output_tokens_per_s"], 3
        ),
        "graphs": sorted(engine.decoder.graphs),
        "peak_GiB": peak_gib(),
    }


def lora_numerics(model, ids: dict[str, int], adapter: Path, prompt_length: int) -> dict:
    """One adapter applied as serving applies it (the hooks, in the model's dtype) against the same adapter merged
    into the weights (W + scale · B A, computed in fp32, then cast): the largest difference of the last
    position's logits and whether their argmax agrees. The merged weights replace the originals for one forward
    pass only."""
    import torch

    from glmcore.adapters import attach_adapter, model_compute_dtype, read_adapter_shape, read_adapter_weights

    prompt = list(range(10, 10 + prompt_length - 2)) + [ids["gmask_token_id"], ids["bos_token_id"]]
    device = next(model.parameters()).device
    input_ids = torch.tensor([prompt], device=device)
    updates = attach_adapter(model, adapter)
    try:
        with torch.no_grad():
            hooked = model(input_ids=input_ids).logits[0, -1].float()
    finally:
        updates.remove()
    adapter_shape = read_adapter_shape(adapter, model)
    originals = {}
    try:
        with torch.no_grad():
            for name, (a, b) in read_adapter_weights(adapter_shape, torch.float32, device).items():
                layer = model.get_submodule(name)
                originals[name] = layer.weight
                merged = layer.weight.float() + adapter_shape.scale * (a @ b).t()
                layer.weight = torch.nn.Parameter(merged.to(layer.weight.dtype), requires_grad=False)
            merged_logits = model(input_ids=input_ids).logits[0, -1].float()
    finally:
        for name, weight in originals.items():
            model.get_submodule(name).weight = weight
    return {
        "dtype": str(model_compute_dtype(model)).removeprefix("torch."),
        "max_abs_logit_difference": round(float((hooked - merged_logits).abs().max()), 5),
        "logit_scale": round(float(merged_logits.abs().max()), 3),
        "same_argmax": bool(hooked.argmax() == merged_logits.argmax()),
    }


# --- the optional int4 backend (torchao) -----------------------------------------------------------

NUMERICS_PROMPTS = 4


def stored_bytes(model) -> int:
    """The bytes the model's parameters hold: a tensor subclass (torchao's int4 weights) counts its inner tensors
    (packed values, scales and zero points), not the 16-bit shape it stands for."""

    def size(tensor) -> int:
        if hasattr(tensor, "__tensor_flatten__"):
            names, _ = tensor.__tensor_flatten__()
            return sum(size(getattr(tensor, name)) for name in names if getattr(tensor, name) is not None)
        return tensor.numel() * tensor.element_size()

    return sum(size(parameter) for parameter in model.parameters())


def numerics_prompts(ids: dict[str, int], length: int) -> list[list[int]]:
    """`NUMERICS_PROMPTS` different prompts of `length` tokens ending as the family's prompts end."""
    tail = [ids["gmask_token_id"], ids["bos_token_id"]]
    return [
        [10 + (row * 7 + column) % 500 for column in range(length - 2)] + tail
        for row in range(NUMERICS_PROMPTS)
    ]


def last_logits(model, prompts: list[list[int]]):
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return model(torch.tensor(prompts, device=device)).logits[:, -1].float().cpu()


def four_bit_numerics(model_dir: Path, ids: dict[str, int], prompt_length: int) -> dict:
    """int4's and NF4's last-position logits against 16-bit's on the same prompts."""
    from glmcore.models.loading import load_model

    prompts = numerics_prompts(ids, prompt_length)
    logits = {}
    for name, options in (
        ("16-bit", {}),
        ("int4", {"quantization_bit": 4, "four_bit": "int4"}),
        ("nf4", {"quantization_bit": 4}),
    ):
        model = load_model(model_dir, **options)
        logits[name] = last_logits(model, prompts)
        del model
        reset_peak()
    reference = logits.pop("16-bit")
    figures = {
        "prompts": NUMERICS_PROMPTS,
        "prompt": prompt_length,
        "logit_scale": round(float(reference.abs().max()), 3),
    }
    for name, values in logits.items():
        difference = values - reference
        figures[name] = {
            "max_abs_logit_difference": round(float(difference.abs().max()), 5),
            "relative_difference": round(float(difference.norm() / reference.norm()), 5),
            "same_argmax": float((values.argmax(-1) == reference.argmax(-1)).float().mean()),
        }
    return figures


def decode_row(model, bench: BenchModel, bits: int, bound: float | None, tiny: bool, **labels) -> None:
    """Report batch-1 decoding of a loaded model: tokens/s, and with the card's copy `bound` the share of it that
    reading the weights once a token allows (their stored bytes: a 4-bit format counts what it holds)."""
    rate = decoding(model, bench.special_ids, 1, SOURCE + 2, 128 if not tiny else 8)
    weight_bytes = stored_bytes(model)
    extra = {}
    if bound:
        extra = {
            "bound_tokens_per_s": round(bound / weight_bytes, 1),
            "share_of_bound": round(rate * weight_bytes / bound, 3),
        }
    report(
        "decode",
        bits=bits,
        **labels,
        batch=1,
        prompt=SOURCE + 2,
        tokens_per_s=round(rate, 1),
        weights_GB=round(weight_bytes / 1e9, 2),
        graph_error=decoding.graph_error,
        step_ms=decoding.step_ms,
        peak_GiB=peak_gib(),
        **extra,
    )


def int4_figures(model_dir: Path, bench: BenchModel, wanted: set[str], bound: float | None, tiny: bool) -> None:
    """Report the int4 figures `wanted` asks for (`decode4i`, `serve4i`): torchao's int4 weights against 16-bit
    and NF4 on the same checkpoint (glmcore/models/int4.py, issue 36). `decode4i`: each 4-bit format's
    last-position logits against 16-bit's on the same prompts (max |difference|, and the difference's norm over
    16-bit's), then batch-1 decoding as `decode4` measures NF4, its bound counted from the bytes the int4
    weights hold. `serve4i`: the `serve` figure's clients through the serving engine with int4 weights."""
    from glmcore.models.loading import load_model

    if "decode4i" in wanted:
        report("four_bit_numerics", **four_bit_numerics(model_dir, bench.special_ids, SOURCE + 2))
    reset_peak()
    model = load_model(model_dir, quantization_bit=4, four_bit="int4")
    if "decode4i" in wanted:
        decode_row(model, bench, 4, bound, tiny, four_bit="int4")
    if "serve4i" in wanted:
        new_tokens = 128 if not tiny else 16
        for figures in serving(model, bench.special_ids, 4, SOURCE + 2, new_tokens, bound):
            report("serve", four_bit="int4", **figures)
    del model
    reset_peak()


FIGURES = (
    "bandwidth",
    "ptuning16",
    "ptuning4",
    "decode16",
    "decode4",
    "evaluate",
    "evaluate_prefix",
    "load",
    "vram",
    "vramgrid",
    "serve",
    "decode4i",
    "serve4i",
)
INT4_FIGURES = {"decode4i", "serve4i"}


def default_figures() -> set[str]:
    """Every figure; the int4 backend's only where its optional package (torchao) is installed."""
    import importlib.util

    if importlib.util.find_spec("torchao") is None:
        return set(FIGURES) - INT4_FIGURES
    return set(FIGURES)


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(prog="python -m glmcore.bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiny", action="store_true", help="a toy shape: checks the suite runs; numbers mean nothing"
    )
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated figures: "
        + ", ".join(FIGURES)
        + " (default: all; the int4 ones where torchao is installed)",
    )
    parser.add_argument(
        "--grid-methods",
        default="ptuning-v2,lora",
        help="the fine-tuning methods whose cells vramgrid measures (comma-separated; default both)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where the random checkpoint is written")
    parser.add_argument(
        "--family",
        choices=[family.name for family in FAMILIES],
        default=DEFAULT_FAMILY.name,
        help=f"the model family whose real shape is measured (default {DEFAULT_FAMILY.name})",
    )
    args = parser.parse_args(argv)
    quiet_libraries()
    wanted = set(args.only.split(",")) if args.only else default_figures()
    unknown = wanted - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures: {', '.join(sorted(unknown))}")
    unknown_methods = set(args.grid_methods.split(",")) - {method for method, *_ in GRID_CELLS}
    if unknown_methods:
        parser.error(f"unknown --grid-methods: {', '.join(sorted(unknown_methods))} (ptuning-v2, lora)")
    if INT4_FIGURES & wanted:
        from glmcore.errors import GlmError
        from glmcore.models.int4 import INT4, check_four_bit

        try:
            check_four_bit(INT4, 4)
        except GlmError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    family = family_named(args.family)
    bench = bench_model(family, args.tiny)
    scale = (
        {"steps": 2, "examples": 24, "batch": 8, "new": 8}
        if args.tiny
        else {"steps": 5, "examples": 1070, "batch": 128, "new": 64}
    )
    report("environment", **versions(), family=family.name, shape="tiny" if args.tiny else family.name)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="glmtui-bench-"))
    model_dir = workdir / f"{family.name}-random"
    bound = None
    try:
        if "bandwidth" in wanted:
            rate = bandwidth()
            report("copy_bandwidth_GBps_rw", value=round(rate / 1e9, 1) if rate else None)
            bound = rate
        if not model_dir.is_dir():
            started = time.perf_counter()
            write_random_checkpoint(model_dir, bench)
            report("random_checkpoint_written", seconds=round(time.perf_counter() - started, 1))
        if "load" in wanted:
            from glmcore.models.checkpoint import convert_to_safetensors, require_complete

            published_format = require_complete(model_dir).weight_format
            report(
                "load_to_first_token",
                source=f"{published_format} shards (page cache warm)",
                seconds=round(load_to_first_token(model_dir, bench.special_ids), 2),
            )
            again = ""
            if published_format != "safetensors":  # GLM-4 publishes safetensors: its second load is a second one
                started = time.perf_counter()
                convert_to_safetensors(model_dir)
                report("convert_to_safetensors", seconds=round(time.perf_counter() - started, 1))
            else:
                again = ", loaded again"
            report(
                "load_to_first_token",
                source=f"safetensors (page cache warm{again})",
                seconds=round(load_to_first_token(model_dir, bench.special_ids), 2),
            )
        # (batch, accumulation, gradient checkpointing: None = the product's automatic choice)
        plans = {
            "ptuning16": (16, ((16, 1, None), (1, 1, None), (1, 1, True))),
            "ptuning4": (4, ((1, 16, None), (16, 1, None))),
        }
        for name, (bits, settings) in plans.items():
            if name in wanted:
                for batch, accumulation, checkpointing in settings:
                    figures = ptuning_steps(
                        model_dir, bench.special_ids, bits, batch, accumulation, scale["steps"], checkpointing
                    )
                    report("ptuning_step", **figures)
        if "vram" in wanted:
            for bits, batch, accumulation in ((4, 1, 16), (8, 1, 16), (16, 16, 1)):
                if bits == 8 and not torch.cuda.is_available():
                    continue  # LLM.int8 needs a GPU
                report("vram_calibration", **measured_vram(model_dir, workdir, bits, batch, accumulation))
        if "vramgrid" in wanted:
            methods = tuple(args.grid_methods.split(","))
            for cell in vram_grid(model_dir, workdir, repeats=1 if args.tiny else 3, methods=methods):
                report("vram_grid", **cell)
        for bits in (16, 4):
            if {f"decode{bits}", "evaluate", "evaluate_prefix"} & wanted and (
                bits == 16 or f"decode{bits}" in wanted
            ):
                from glmcore.models.loading import load_model

                allocated_before = reset_peak()
                model = load_model(model_dir, quantization_bit=bits)
                if f"decode{bits}" in wanted:
                    decode_row(model, bench, bits, bound, args.tiny)
                if bits == 16 and "evaluate" in wanted:
                    report(
                        "batched_evaluation",
                        bits=16,
                        **batched_evaluation(
                            model, bench.special_ids, scale["examples"], scale["batch"], scale["new"]
                        ),
                        peak_GiB=peak_gib(),
                        allocated_before_load_GiB=allocated_before,
                    )
                if bits == 16 and "evaluate_prefix" in wanted:
                    from glmcore.prefix import PrefixSpec, set_prefix

                    set_prefix(model, PrefixSpec(PRE_SEQ_LEN, False))  # a fresh fp32 prefix, as a P-tuning run's
                    report(
                        "batched_evaluation",
                        bits=16,
                        pre_seq_len=PRE_SEQ_LEN,
                        **batched_evaluation(
                            model, bench.special_ids, scale["examples"], scale["batch"], scale["new"]
                        ),
                        peak_GiB=peak_gib(),
                    )
                    set_prefix(model, None)
                del model
                reset_peak()
        if INT4_FIGURES & wanted:
            int4_figures(model_dir, bench, wanted, bound, args.tiny)
        for bits in (16, 4):
            if "serve" in wanted and (bits == 16 or torch.cuda.is_available()):  # NF4 needs a GPU
                from glmcore.models.loading import load_model

                reset_peak()
                model = load_model(model_dir, quantization_bit=bits)
                new_tokens = 128 if not args.tiny else 16
                for figures in serving(model, bench.special_ids, bits, SOURCE + 2, new_tokens, bound):
                    report("serve", **figures)
                folder = workdir / f"serve-mixed-{bits}"
                shutil.rmtree(folder, ignore_errors=True)
                mixed = mixed_serving(model, bench.special_ids, bits, SOURCE + 2, new_tokens, folder)
                report("serve_mixed", **mixed)
                if bits == 16:
                    adapter = folder / "adapter-0"
                    report("lora_numerics", **lora_numerics(model, bench.special_ids, adapter, SOURCE + 2))
                del model
                reset_peak()
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
