"""`glmtui eval`: score the base model and prefix checkpoints on a dataset (BLEU-4, Rouge) side by side.

With `--run`, the model, data, columns, lengths and quantization default to the run's, the checkpoints to the
base model plus every checkpoint of the run, and the results land in `<run>/evaluations/<time>/`. A damaged
checkpoint is skipped, with its reason in the table and in comparison.json.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from glmcore.errors import GlmError
from glmcore.metrics import METRIC_MODES
from glmtui.commands.family_option import add_family_option, apply_family
from glmtui.commands.four_bit_option import add_four_bit_option
from glmtui.commands.runs import store_from_workspace
from glmtui.text.figures import speed_and_eta
from glmtui.text.metrics import scored_line

if TYPE_CHECKING:
    from glmcore.evaluate import EvalPlan

EXIT_CANCELLED = 130


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate the base model and prefix or LoRA checkpoints (BLEU-4, Rouge), side by side",
        description=(
            "Generate for every example of a dataset and score it (BLEU-4, Rouge-1/2/L) as the model family's "
            "published fine-tuning does: ChatGLM-6B's ptuning/main.py for ChatGLM-6B and ChatGLM2-6B, the "
            "finetune_demo of ChatGLM3-6B and GLM-4 for those (--metric-mode chooses). Several --checkpoint "
            "options compare them in one go; 'base' is the model without a prefix."
        ),
    )
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the run's model)")
    add_family_option(parser)
    parser.add_argument(
        "--run",
        metavar="RUN",
        default=None,
        help="a run (id, id prefix, name or folder): its checkpoints and settings",
    )
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=None,
        metavar="CK",
        help="checkpoint-N or N of --run, a prefix or LoRA checkpoint folder, a run (the checkpoint it stands for), "
        "or 'base'; repeatable (default: base, plus every checkpoint of --run)",
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="dataset file (default: the run's validation file)"
    )
    parser.add_argument("--prompt-column", default=None, help="prompt column (default: content)")
    parser.add_argument("--response-column", default=None, help="response column (default: summary)")
    parser.add_argument("--history-column", default=None, help="history column, if the data has one")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="examples per batch (default: from free GPU memory; 8 on CPU)",
    )
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="evaluate only the first N examples of the data"
    )
    parser.add_argument(
        "--max-source-length", type=int, default=None, help="prompt tokens kept (default: the run's, else 64)"
    )
    parser.add_argument(
        "--max-target-length", type=int, default=None, help="new tokens at most (default: the run's, else 64)"
    )
    parser.add_argument(
        "--quantization-bit", type=int, choices=(4, 8, 16), default=None, help="base weights (default 16)"
    )
    add_four_bit_option(parser)
    parser.add_argument(
        "--sample",
        action="store_true",
        help="sample as ChatGLM-6B's evaluation does (top_p 0.7, temperature 0.95) instead of greedy decoding",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed for --sample (default 42)")
    parser.add_argument(
        "--metric-mode",
        choices=list(METRIC_MODES),
        default=None,
        help="ptuning: ChatGLM-6B ptuning/main.py's character BLEU-4 ×100; finetune-demo: ChatGLM3/GLM-4 "
        "finetune_demo's word BLEU-4 on a 0–1 scale (default: the run's metric_mode, else the family's way)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: a new timestamped one)"
    )
    parser.set_defaults(func=run)


def plan(args: argparse.Namespace) -> tuple[EvalPlan, Path]:
    """The evaluation the options ask for (glmcore.evaluate.plan_evaluation, as the app asks it) and its
    output folder."""
    from glmcore.evaluate import (
        BASE,
        check_evaluable_run,
        new_evaluation_folder,
        new_run_evaluation_folder,
        plan_evaluation,
    )
    from glmcore.workspace import Workspace

    store = store_from_workspace()
    run = store.resolve(args.run) if args.run else None
    if run is not None:
        check_evaluable_run(run)  # before its checkpoints are looked for
    checkpoints = None
    if args.checkpoint:
        checkpoints = [
            BASE if value == BASE else store.resolve_checkpoint(value, run) for value in args.checkpoint
        ]
    evaluation = plan_evaluation(
        run,
        model=args.model,
        checkpoints=checkpoints,
        data=args.data,
        prompt_column=args.prompt_column,
        response_column=args.response_column,
        history_column=args.history_column,
        max_source_length=args.max_source_length,
        max_target_length=args.max_target_length,
        quantization_bit=args.quantization_bit,
        family=args.family,
        batch_size=args.batch_size,
        seed=args.seed,
        sample=args.sample,
        metric_mode=args.metric_mode,
        four_bit=args.four_bit,
    )
    if args.out is not None:
        output_root = args.out.expanduser()
    elif run is not None:
        output_root = new_run_evaluation_folder(run)
    else:
        output_root = new_evaluation_folder(Workspace.from_env().root / "evaluations")
    return evaluation, output_root


def run(args: argparse.Namespace) -> int:
    from glmcore.evaluate import EvaluationCancelled

    console = Console(stderr=True)
    try:
        evaluation, output_root = plan(args)
        apply_family(args.family, evaluation.model_path)
        names = ", ".join(str(checkpoint) for checkpoint in evaluation.checkpoints)
        subset = f" (its first {args.limit} examples)" if args.limit else ""
        console.print(f"Evaluating {names} on {evaluation.data_file}{subset} into {output_root}", markup=False)
        arguments = {**evaluation.compare_arguments(), "output_root": output_root, "limit": args.limit}
        comparison = run_with_progress(console, arguments)
    except EvaluationCancelled:
        console.print("Cancelled before any evaluation finished; nothing was written.")
        return EXIT_CANCELLED
    except GlmError as error:
        console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        return 1
    Console().print(metrics_table(comparison))
    if not comparison.complete:
        planned = len(evaluation.checkpoints) - len(comparison.skipped)
        console.print(
            f"[yellow]Cancelled:[/yellow] {len(comparison.evaluations)} of {planned} "
            "evaluations finished; comparison.json marks the results as incomplete."
        )
    print(comparison.output_dir)
    return 0 if comparison.complete else EXIT_CANCELLED


def metrics_table(comparison) -> Table:
    """One row per evaluation, then one per skipped checkpoint with why in a last column."""
    table = Table(title="Evaluation", caption=scored_line(comparison.metric_mode))
    table.add_column("checkpoint")
    for heading in ("BLEU-4", "Rouge-1", "Rouge-2", "Rouge-l"):
        table.add_column(heading, justify="right")
    table.add_column("examples", justify="right")
    table.add_column("tokens/s", justify="right")
    if comparison.skipped:
        table.add_column("skipped because", overflow="fold")
    for evaluation in comparison.evaluations:
        metrics = evaluation.metrics
        table.add_row(
            Text(evaluation.label),
            *(f"{metrics[name]:.2f}" for name in ("bleu-4", "rouge-1", "rouge-2", "rouge-l")),
            str(len(evaluation.examples)),
            f"{evaluation.tokens_per_second:,.0f}",
        )
    for entry in comparison.skipped:
        table.add_row(Text(entry.label), *[""] * 6, Text(entry.reason, style="yellow"))
    return table


def run_with_progress(console: Console, arguments: dict):
    """Run the comparison on a worker thread, so that Ctrl-C cancels it cleanly."""
    from glmcore.evaluate import compare_checkpoints

    cancel = threading.Event()
    outcome: dict[str, object] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
    ) as bars:
        tasks: dict[str, TaskID] = {}

        def show(snapshot) -> None:
            if snapshot.label not in tasks:
                tasks[snapshot.label] = bars.add_task(snapshot.label, total=snapshot.total, detail="")
            finished = snapshot.phase == "scoring" and snapshot.done == snapshot.total
            phase = "done" if finished else snapshot.phase
            detail = speed_and_eta(snapshot.tokens_per_second, None if finished else snapshot.eta_seconds)
            bars.update(
                tasks[snapshot.label],
                description=f"{snapshot.label} ({phase}, {snapshot.evaluation}/{snapshot.evaluations})",
                completed=snapshot.done,
                total=snapshot.total,
                detail=detail,
            )

        def work() -> None:
            try:
                outcome["result"] = compare_checkpoints(**arguments, progress=show, cancel=cancel)
            except BaseException as error:  # handed to the main thread, which re-raises it
                outcome["error"] = error

        worker = threading.Thread(target=work, name="glmtui-eval", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.2)
        except KeyboardInterrupt:
            console.print("Cancelling after the current token…")
            cancel.set()
            worker.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]
