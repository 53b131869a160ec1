"""`glmtui chat --run RUN` or `glmtui chat --model PATH [--checkpoint CK]`: a plain terminal chat that streams
the answer.

Each line read is one message. On a terminal it prompts and shows notices; from a pipe it writes only the
answers, one per message, so scripts can use it. Commands: /clear, /prefix PATH|off, /quit. Ctrl-C during an
answer stops that answer (it is not kept in the history); at the prompt it ends the chat.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from glmcore.errors import GlmError
from glmtui.commands.family_option import add_family_option, apply_family
from glmtui.text.estimate import context_line

if TYPE_CHECKING:
    from glmcore.chat import ChatPlan

COMMANDS_HELP = "Commands: /clear forgets the conversation, /prefix PATH|off switches the prefix, /quit ends."


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="chat with the model in the terminal, with or without a prefix or LoRA checkpoint",
        description="A plain streaming chat. "
        + COMMANDS_HELP
        + " Reads messages from stdin when it is not a TTY.",
    )
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the run's model)")
    add_family_option(parser)
    parser.add_argument(
        "--run",
        metavar="RUN",
        default=None,
        help="a P-tuning or LoRA run (id, id prefix, name or folder): its model and prefix or adapter",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="CK",
        default=None,
        help="the prefix or adapter to start with: checkpoint-N or N of --run, a checkpoint folder, or a run "
        "(default with --run: the checkpoint it stands for, its best when marked, else its latest complete one; without: no prefix)",
    )
    parser.add_argument(
        "--quantization-bit",
        type=int,
        choices=(4, 8, 16),
        default=None,
        help="base weights (default: the run's, else 16)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=512, help="answer length limit (default 512)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--top-p", type=float, default=0.7, help="sampling top_p (default 0.7)")
    parser.add_argument("--temperature", type=float, default=0.95, help="sampling temperature (default 0.95)")
    parser.add_argument("--seed", type=int, default=None, help="seed each answer, so answers repeat")
    parser.add_argument(
        "--system", default=None, help="system prompt (ChatGLM3, GLM-4; ChatGLM2 takes it as a first round)"
    )
    parser.add_argument(
        "--context",
        type=int,
        default=None,
        help="tokens the KV cache starts with, grown when a conversation needs more "
        "(default 8192, at most the model's positions)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glmcore.chat import ChatSession, ChatSettings, check_context
    from glmcore.estimate import context_cache
    from glmcore.models.family import ModelShape
    from glmcore.models.loading import load_model, load_tokenizer

    notices = Console(stderr=True)
    interactive = sys.stdin.isatty()
    try:
        settings = ChatSettings(
            max_new_tokens=args.max_new_tokens,
            sampling=not args.greedy,
            top_p=args.top_p,
            temperature=args.temperature,
            seed=args.seed,
        )
        check_context(args.context)
        plan = chat_plan(args, notices)
        model = plan.model
        apply_family(args.family, model)
        if interactive:
            notices.print(f"Loading {model} …")
        tokenizer = load_tokenizer(model, family=plan.family)
        session = ChatSession(
            load_model(model, quantization_bit=plan.quantization_bit, family=plan.family),
            tokenizer,
            system=args.system,
            context=args.context,
        )
        session.settings = settings
        cache = context_cache(ModelShape.from_model_dir(model, plan.family), session.context)
        if plan.checkpoint is not None:
            session.use_checkpoint(plan.checkpoint)
    except GlmError as error:
        notices.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        return 1
    if interactive:
        notices.print(
            f"Chatting with {model.name}, {session.family_title} ({_prefix_name(session)}). {COMMANDS_HELP}"
        )
        notices.print(Text(context_line(cache)))
    return converse(session, sys.stdin, sys.stdout, notices, interactive=interactive)


def chat_plan(args: argparse.Namespace, notices: Console) -> ChatPlan:
    """What the options name to load (glmcore.chat.plan_chat, as the app asks it); a run's newer checkpoints
    passed over as damaged are named on `notices`."""
    import dataclasses

    from glmcore.chat import plan_chat
    from glmtui.commands.runs import store_from_workspace

    store = store_from_workspace()
    run = store.resolve(args.run) if args.run else None
    plan = plan_chat(  # refuses a run chat cannot use before its checkpoint is looked for
        run,
        model=args.model,
        run_default=args.checkpoint is None,
        quantization_bit=args.quantization_bit,
        family=args.family,
    )
    if args.checkpoint is not None:
        plan = dataclasses.replace(plan, checkpoint=store.resolve_checkpoint(args.checkpoint, run))
    for passed_over, problem in plan.passed_over:
        notices.print(Text(f"{passed_over.name} cannot be loaded ({problem}); using {plan.checkpoint.name}."))
    return plan


def _prefix_name(session) -> str:
    if session.adapter:
        return f"LoRA adapter {session.adapter}"
    return f"prefix {session.prefix}" if session.prefix else "no prefix"


def converse(session, source: TextIO, out: TextIO, notices: Console, *, interactive: bool) -> int:
    """Read messages until /quit or the end of input, streaming each answer to `out`."""
    while True:
        try:
            line = input("\n用户：") if interactive else source.readline()
        except (EOFError, KeyboardInterrupt):
            return 0
        if not interactive and not line:
            return 0
        message = line.strip()
        if not message:
            continue
        if message.startswith("/"):
            if not _command(session, message, notices):
                return 0
            continue
        _answer(session, message, out, notices, interactive=interactive)


def _command(session, message: str, notices: Console) -> bool:
    """Run a /command; False means quit."""
    name, _, argument = message.partition(" ")
    argument = argument.strip()
    if name == "/quit":
        return False
    if name == "/clear":
        session.clear()
        notices.print("History cleared.")
    elif name == "/prefix" and argument:
        try:
            session.use_prefix(None if argument == "off" else Path(argument).expanduser())
        except GlmError as error:
            notices.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        else:
            notices.print(f"Now answering with {escape(_prefix_name(session))}.")
    else:
        notices.print(f"Unknown command {escape(message)!r}. {COMMANDS_HELP}")
    return True


def _answer(session, message: str, out: TextIO, notices: Console, *, interactive: bool) -> None:
    """Stream one answer; Ctrl-C stops it and leaves it out of the history."""
    try:
        turn = session.stream(message)
    except GlmError as error:
        notices.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        return
    if turn.trimmed_rounds:
        notices.print(
            f"[yellow]note:[/yellow] the {turn.trimmed_rounds} oldest rounds no longer fit the model's "
            "positions and were dropped from the history."
        )
    if interactive:
        out.write(f"\n{session.family_title}：")
    try:
        for delta in turn:
            out.write(delta)
            out.flush()
    except KeyboardInterrupt:
        turn.close()
    except GlmError as error:
        notices.print(f"\n[red]error:[/red] {escape(str(error))}", highlight=False)
    out.write("\n")
    out.flush()
    if turn.cancelled:
        notices.print("(answer stopped; it is not kept in the history)")
