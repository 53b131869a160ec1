"""`glmtui chat --run RUN` or `glmtui chat --model PATH [--checkpoint CK]`: a plain terminal chat that streams
the answer.

Each line read is one message. On a terminal it prompts and shows notices; from a pipe it writes only the
answers, one per message, so scripts can use it. Commands: /clear, /prefix PATH|off, /quit. Ctrl-C during an
answer stops that answer (it is not kept in the history); at the prompt it ends the chat.

With `--tools FILE` (ChatGLM3, GLM-4) an answer that is a tool call is written as one line, `tool call NAME
ARGUMENTS` (the arguments as the family writes them), and the next line read is that call's result, which the
model reads as the tool's observation. A thinking model's (GLM-Z1's) reasoning is written before its answer,
dimmed and labelled on a terminal and on stderr from a pipe, unless `--hide-reasoning`.
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
from glmtui.commands.four_bit_option import add_four_bit_option
from glmtui.text.chat import REASONING_LABEL, REASONING_STYLE, call_text, result_hint
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
    add_four_bit_option(parser)
    parser.add_argument("--max-new-tokens", type=int, default=512, help="answer length limit (default 512)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--top-p", type=float, default=0.7, help="sampling top_p (default 0.7)")
    parser.add_argument("--temperature", type=float, default=0.95, help="sampling temperature (default 0.95)")
    parser.add_argument("--seed", type=int, default=None, help="seed each answer, so answers repeat")
    parser.add_argument(
        "--system", default=None, help="system prompt (ChatGLM3, GLM-4; ChatGLM2 takes it as a first round)"
    )
    parser.add_argument(
        "--tools",
        type=Path,
        default=None,
        metavar="FILE",
        help="a JSON list of tools the model may call (ChatGLM3, GLM-4): OpenAI's definitions or the family's "
        "published list of functions; a call's result is the next message",
    )
    parser.add_argument(
        "--hide-reasoning",
        action="store_true",
        help="leave out a thinking model's (GLM-Z1's) reasoning and write only its answer",
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
    from glmcore.chat import ChatSession, ChatSettings, check_context, check_tools_family
    from glmcore.estimate import context_cache
    from glmcore.models.family import ModelShape
    from glmcore.models.loading import load_model, load_tokenizer
    from glmcore.tool_calls import read_tools_file

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
        tools = read_tools_file(args.tools) if args.tools is not None else None
        plan = chat_plan(args, notices)
        model = plan.model
        apply_family(args.family, model)
        if tools:
            check_tools_family(model, plan.family)
        if interactive:
            notices.print(Text(f"Loading {model} …"))
        tokenizer = load_tokenizer(model, family=plan.family)
        session = ChatSession(
            load_model(
                model, quantization_bit=plan.quantization_bit, family=plan.family, four_bit=plan.four_bit
            ),
            tokenizer,
            system=args.system,
            context=args.context,
        )
        session.settings = settings
        session.use_tools(tools)
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
    return converse(
        session,
        sys.stdin,
        sys.stdout,
        notices,
        interactive=interactive,
        show_reasoning=not args.hide_reasoning,
    )


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
        four_bit=args.four_bit,
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


def converse(
    session, source: TextIO, out: TextIO, notices: Console, *, interactive: bool, show_reasoning: bool = True
) -> int:
    """Read messages until /quit or the end of input, streaming each answer to `out`; after a tool call, the
    line read is its result."""
    while True:
        call = session.pending_call
        try:
            line = (
                input(f"\n结果 ({call.name})：" if call else "\n用户：") if interactive else source.readline()
            )
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
        _answer(session, message, out, notices, interactive=interactive, show_reasoning=show_reasoning)


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


def _answer(
    session, message: str, out: TextIO, notices: Console, *, interactive: bool, show_reasoning: bool
) -> None:
    """Stream one answer (a thinking model's reasoning first, apart); Ctrl-C stops it and leaves it out of the
    history. A call is written as one line once the answer has ended."""
    from glmcore.reasoning import ReplyStream

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
    styled = Console(file=out, highlight=False) if interactive else None
    reasoning_out = styled if interactive else notices
    parts = ReplyStream(opened=turn.opens_reasoning)
    reasoned = answered = False
    if interactive:
        out.write(f"\n{session.family_title}：")
    try:
        for _ in turn:
            reasoning, answer = parts.advance(turn.response)
            if reasoning and show_reasoning:
                if not reasoned:
                    reasoning_out.print(
                        Text(f"({REASONING_LABEL}) ", style=f"bold {REASONING_STYLE}"), end=""
                    )
                reasoning_out.print(Text(reasoning, style=REASONING_STYLE), end="")
                reasoned = True
            if answer:
                if reasoned and not answered:
                    reasoning_out.print()
                    if interactive:
                        out.write(f"{session.family_title}：")
                answered = True
                out.write(answer)
            out.flush()
    except KeyboardInterrupt:
        turn.close()
    except GlmError as error:
        notices.print(f"\n[red]error:[/red] {escape(str(error))}", highlight=False)
    if turn.call is not None:
        line = call_text(turn.call.name, session.arguments_text(turn.call))
        if styled is not None:
            styled.print(line, end="")
        else:
            out.write(line.plain)
    out.write("\n")
    out.flush()
    if reasoned and not answered and not interactive:
        notices.print()
    if turn.cancelled:
        notices.print("(answer stopped; it is not kept in the history)")
    elif turn.call is not None and interactive:
        notices.print(Text(result_hint(turn.call.name)))
