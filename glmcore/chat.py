"""Chat with a model, with or without a P-tuning v2 prefix, streaming the answer as it is generated.

The prompt, the stop tokens and the answer clean-up are the model family's (`family_impl`; ChatGLM-6B's, in
glmcore/models/chatglm6b/chat.py: the bare query on the first turn, then `[Round i]` rounds; ChatGLM3's role
messages after an optional system prompt). History that no longer fits the model's positions (its config's: 2048
for ChatGLM-6B, `seq_length` for ChatGLM2/3; less the prefix and the answer budget) is dropped oldest round
first, and the turn says how many rounds went (`ChatTurn.trimmed_rounds`).

The KV cache is sized for the session's `context` (`glmcore.estimate.DEFAULT_CONTEXT`, 8,192 tokens, capped by the
positions), not for the positions: a turn that needs more (prefix + prompt + answer) grows it, at least doubling,
up to the positions, and the decoder is built again for the new size.

Streaming: `generate` runs on a worker thread with the KV cache and hands each new token to the turn through a
queue; the turn decodes the answer so far, applies the published clean-up and yields only the part that can no
longer change (a trailing half-width punctuation mark waits for the next character, which decides whether it
becomes full-width). So the concatenated deltas are always exactly the final answer. Token-space clean-up
("Hello , world" -> "Hello, world") is not applied in chat, as it could change text already shown; ChatGLM's
answers are Chinese, where it never applies.

Cancelling: a cancelled answer stops at the next token. Its partial text stays on the turn (to show), but it is
NOT added to the history: an answer cut short is usually one the user did not want the model to build on.

Tools: where the family's chat format has them (ChatGLM3, GLM-4; glmcore.tool_calls), `use_tools` describes
OpenAI-style tool definitions in every later prompt, which is then the family's prompt with tools over the
conversation's messages (`messages`: user messages, answers, calls, tool results). An answer is held back while
the family says it may still be a call and parsed when it ends as the family's published demo parses it: a call
is `ChatTurn.call`, anything else is text. While a call waits for its result (`pending_call`), the next message
sent is that result, which the model reads as the family's observation.

Reasoning: a thinking model's (GLM-Z1's) output is parted into its reasoning and its answer (`ChatTurn.reply`,
glmcore.reasoning); the history keeps the answer alone, as Z1's published template feeds a turn back.

Prefixes: `use_prefix` swaps only the small prefix encoder; the base weights stay where they are. Prefix weights
are cached by checkpoint path (`PrefixCache`), so switching back to one already loaded reads no file. A LoRA
run's checkpoint is applied the way the server applies it (`glmcore.adapters`: the adapter's low-rank update
added to each target layer's output), so chat answers as the exported, merged model does; `use_checkpoint`
takes either kind.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from glmcore.errors import GlmError
from glmcore.reasoning import Reply, prompt_ids_open_reasoning, settled_length, split_reasoning
from glmcore.tool_calls import ToolCall, function_tools, has_tools

if TYPE_CHECKING:
    import torch

    from glmcore.prefix import PrefixSpec
    from glmcore.runs import Run

DEFAULT_MAX_SEQUENCE_LENGTH = 2048


class ChatError(GlmError):
    """A chat turn or prefix switch cannot happen as asked."""


@dataclass(frozen=True)
class ChatSettings:
    """Generation settings of a turn; ChatGLM-6B's chat defaults (sampling, top_p 0.7, temperature 0.95)."""

    max_new_tokens: int = 512
    sampling: bool = True
    top_p: float = 0.7
    temperature: float = 0.95
    seed: int | None = None
    """With a seed, the same history and query give the same answer."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ChatError(f"The answer length must be at least 1 token, not {self.max_new_tokens}.")
        if not 0 < self.top_p <= 1:
            raise ChatError(f"top_p must be in (0, 1], not {self.top_p}.")
        if self.temperature <= 0:
            raise ChatError(f"The temperature must be above 0, not {self.temperature}.")

    def sampling_options(self):
        from glmcore.generation import Sampling

        if not self.sampling:
            return Sampling()
        # transformers 4.27, under which ChatGLM-6B's chat was published, applied top_k 50 by default.
        return Sampling(
            do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=50, seed=self.seed
        )


def check_context(context: int | None) -> None:
    """ChatError for a context that holds no token (None: the default)."""
    if context is not None and context < 1:
        raise ChatError(f"--context {context} holds no token: give 1 or more, or leave it out for 8192.")


@dataclass(frozen=True)
class ChatPlan:
    """What a chat loads: the model folder as its family, its base weights' bits and the prefix or LoRA adapter
    to start with."""

    model: Path
    checkpoint: Path | None
    quantization_bit: int
    family: str | None
    """The `family` setting to load with (the run's, or as asked); None: found from the folder."""
    passed_over: tuple[tuple[Path, str], ...] = ()
    """A run's newer checkpoints that cannot be loaded, each with why, when its default one was picked."""
    four_bit: str = "nf4"
    """How 4-bit weights are stored: nf4 or int4 (`glmcore.models.int4`)."""


def plan_chat(
    run: Run | None,
    *,
    model: Path | None = None,
    checkpoint: Path | None = None,
    run_default: bool = False,
    quantization_bit: int | None = None,
    family: str | None = None,
    four_bit: str = "nf4",
) -> ChatPlan:
    """What chatting with `run` (or the `model` folder) loads, decided before anything loads; raises ChatError
    with the sentence to show when it cannot (a full fine-tuning run, no model named).

    `checkpoint` is the prefix or LoRA adapter asked for (`ChatSession.use_checkpoint` tells them apart); with
    `run_default` and none asked, the run's checkpoint it stands for.
    `model`, `quantization_bit` and `family` override the run's; `four_bit` int4 means 4-bit unless the bits are
    given.
    """
    from glmcore.models import int4

    if run is not None and run.config.method not in ("ptuning-v2", "lora"):
        raise ChatError(
            f"Run {run.id} trained {run.config.method}, neither a prefix nor a LoRA adapter: export it "
            f"(glmtui export {run.id}) and chat with the exported folder (glmtui chat --model FOLDER)."
        )
    passed_over: tuple[tuple[Path, str], ...] = ()
    if checkpoint is None and run_default and run is not None:
        checkpoint = run.default_checkpoint().path
        passed_over = tuple((bad.path, problem) for bad, problem in run.resume_point().skipped)
    folder = model or (run.config.model_path if run is not None else None)
    if folder is None:
        raise ChatError("Name the model folder with --model, or a run with --run.")
    bits = int4.resolve_bits(
        quantization_bit, four_bit, run.config.quantization_bit if run is not None else 16
    )
    int4.check_four_bit(four_bit, bits)
    return ChatPlan(
        model=Path(folder).expanduser(),
        checkpoint=checkpoint,
        quantization_bit=bits,
        family=family or (run.config.family if run is not None else None),
        passed_over=passed_over,
        four_bit=four_bit,
    )


def check_tools_family(model: Path, family: str | None) -> None:
    """ChatError, before anything loads, when the folder's family has no tools in its chat format."""
    from glmcore.models.family import family_for

    model_family, _ = family_for(model, family)
    _check_has_tools(model_family.implementation(), model_family.title, without="--tools")


def _check_has_tools(implementation, title: str, *, without: str) -> None:
    """ChatError when the family's chat format has no tools; `without` names what to chat without."""
    if not has_tools(implementation):
        raise ChatError(
            f"{title}'s chat format has no tools: chat without {without}, or with a ChatGLM3-6B or GLM-4 model."
        )


class PrefixCache:
    """Prefix weights already read, by checkpoint path: switching back to one reads no file."""

    def __init__(self) -> None:
        self._entries: dict[Path, tuple[PrefixSpec, dict[str, torch.Tensor]]] = {}

    @staticmethod
    def key(checkpoint: str | Path) -> Path:
        return Path(checkpoint).expanduser().resolve()

    def __contains__(self, checkpoint: str | Path) -> bool:
        return self.key(checkpoint) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, checkpoint: str | Path) -> tuple[PrefixSpec, dict[str, torch.Tensor]]:
        """The checkpoint's prefix shape and weights, read from disk the first time only."""
        from glmcore.prefix import read_prefix_checkpoint

        key = self.key(checkpoint)
        if key not in self._entries:
            self._entries[key] = read_prefix_checkpoint(key)
        return self._entries[key]

    def clear(self) -> None:
        self._entries.clear()


class _TokenQueue:
    """Hands the new tokens from the generating thread to the consuming turn."""

    END = object()

    def __init__(self) -> None:
        self.items: queue.Queue = queue.Queue()

    def put(self, tokens: list[int]) -> None:
        self.items.put(tokens)

    def end(self) -> None:
        self.items.put(self.END)


class ChatTurn:
    """One answer being generated: iterate it for text deltas; their concatenation is `response`.

    `trimmed_rounds` is known before the first delta. When iteration ends, `response` is final, `call` is the
    tool call the answer was (if it was one) and, unless the turn was cancelled, the round is in the session's
    history. A turn left unfinished is cancelled by the session's next turn (or call `close()`).
    """

    def __init__(
        self,
        session: ChatSession,
        message: dict,
        prompt_ids: list[int],
        settings: ChatSettings,
        trimmed_rounds: int,
        cancel: threading.Event,
        tool_names: set[str] | None = None,
    ) -> None:
        self.message = message
        """What was sent: `{"role": "user" | "observation", "content": ...}` (glmcore.tool_calls' form)."""
        self.query = message["content"]
        self.trimmed_rounds = trimmed_rounds
        self.prompt_tokens = len(prompt_ids)
        self.response = ""
        self.generated_tokens = 0
        self.cancelled = False
        self.finished = False
        self.prompt_ids = prompt_ids
        """The token ids the model is given: the family's chat prompt with history and system, trimmed."""
        self.call: ToolCall | None = None
        """The tool call the finished answer was, parsed as the family's demo parses it; `response` is then what
        the model said before it (often nothing)."""
        self.opens_reasoning = prompt_ids_open_reasoning(session.tokenizer, prompt_ids)
        """Whether the prompt ends inside a `<think>` block (a thinking model's template opens it)."""
        self._tool_names = tool_names
        self._holding = tool_names is not None
        self._session = session
        self._settings = settings
        self._cancel = cancel
        self._tokens: list[int] = []
        self._stream = _TokenQueue()
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    @property
    def reply(self) -> Reply:
        """`response` so far parted into the reasoning and the answer (reasoning None: the model wrote none)."""
        return split_reasoning(self.response, opened=self.opens_reasoning)

    def __next__(self) -> str:
        if self.finished:
            raise StopIteration
        if self._worker is None:
            self._worker = threading.Thread(target=self._generate, name="glmcore-chat", daemon=True)
            self._worker.start()
        while True:
            item = self._stream.items.get()
            if item is _TokenQueue.END:
                return self._finish()
            self._tokens.extend(item)
            self.generated_tokens = len(self._tokens)
            if self._holding:
                if self._session.family.may_be_tool_call(self._decode(), self._tool_names):
                    continue
                self._holding = False
            cleaned = self._session.family.clean_response(self._decode())
            settled = cleaned[: settled_length(self._session.family, cleaned)]
            if len(settled) > len(self.response) and settled.startswith(self.response):
                delta, self.response = settled[len(self.response) :], settled
                return delta

    def cancel(self) -> None:
        """Stop generating at the next token; iteration then ends after the text already produced."""
        self._cancel.set()

    def close(self) -> None:
        """Cancel, and wait for generation to stop without taking the rest of the text or its errors."""
        self.cancel()
        if self.finished:
            return
        if self._worker is None:
            self.finished = self.cancelled = True
            self._session._turn_ended(self)
            return
        with contextlib.suppress(Exception):
            for _ in self:
                pass

    def _decode(self) -> str:
        return self._session.tokenizer.decode(
            self._tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def _generate(self) -> None:
        """The worker: the session's static decoder, each new token handed over through the queue."""
        import torch

        end_of_answer, *other_stops = self._session.family.stop_token_ids(self._session.tokenizer)
        try:
            decoder = self._session.decoder(len(self.prompt_ids) + self._settings.max_new_tokens)
            input_ids = torch.tensor([self.prompt_ids], device=decoder.device)
            steps = decoder.decode(
                input_ids,
                torch.ones_like(input_ids),
                self._settings.max_new_tokens,
                eos_token_id=end_of_answer,
                sampling=self._settings.sampling_options(),
                should_stop=self._cancel.is_set,
            )
            for token in steps:
                if token.item() in other_stops:
                    break
                self._stream.put(token.tolist())
        except torch.OutOfMemoryError:
            self._error = ChatError(
                "The GPU ran out of memory for this answer: clear the history or ask for a shorter answer."
            )
        except BaseException as error:  # handed to the consuming thread, which raises it
            self._error = error
        finally:
            self._stream.end()

    def _finish(self) -> str:
        """Record the turn, then give the text held back until the end (if any)."""
        self._worker.join()
        self.finished = True
        self.cancelled = self._cancel.is_set()
        final = self._session.family.clean_response(self._decode())
        if self._holding and not self.cancelled and self._error is None:
            parsed = self._session.family.parse_tool_call(self._decode(), self._tool_names)
            if parsed is not None:
                final, self.call = parsed.content, parsed.call
        delta = final[len(self.response) :] if final.startswith(self.response) else ""
        self.response = final
        self._session._turn_ended(self)
        if self._error is not None:
            raise self._error
        if not delta:
            raise StopIteration
        return delta


class ChatSession:
    """A conversation with `model`; the prefix can be switched in place between turns."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        prefixes: PrefixCache | None = None,
        system: str | None = None,
        context: int | None = None,
    ) -> None:
        from glmcore.estimate import context_tokens
        from glmcore.models import family_of

        self.model = model
        self.tokenizer = tokenizer
        self.family_title = family_of(model).title
        self.system_role = family_of(model).system_role
        """Whether the family's chat format has a system role (ChatGLM3's)."""
        self.family = family_of(model).implementation()
        """The model family's prompt, stop tokens, clean-up and decoder."""
        self.system: str | None = None
        """The system prompt every turn's prompt starts with (ChatGLM3's `<|system|>` message; ChatGLM2 writes
        it as a first round; ChatGLM-6B has none and refuses one)."""
        self.use_system(system)
        self.tools: list[dict] | None = None
        """The tools (OpenAI definitions) every later prompt describes (`use_tools`); None for none."""
        self.prefixes = prefixes if prefixes is not None else PrefixCache()
        self.messages: list[dict] = []
        """The conversation in glmcore.tool_calls' form (user messages, answers, calls, tool results); the
        system prompt and the tools stand apart."""
        self.settings = ChatSettings()
        self.prefix: Path | None = None
        """The checkpoint whose prefix `use_prefix` installed; None for the model as it was given."""
        self.adapter: Path | None = None
        """The LoRA checkpoint `use_checkpoint` applied over the model's weights; None for none."""
        self._adapter_updates = None
        self._active: ChatTurn | None = None
        self._decoder = None
        self._decoder_made_for = None
        check_context(context)
        self.context = context_tokens(self.max_sequence_length, context)
        """Tokens (prefix + prompt + answer) the KV cache holds now; a longer turn grows it (`decoder`)."""

    @property
    def history(self) -> list[tuple[str, str]]:
        """The conversation as (user message, answer) rounds, a round's answer its last text answer."""
        return conversation_rounds(self.messages)

    @history.setter
    def history(self, rounds: list[tuple[str, str]]) -> None:
        self.messages = [
            message
            for query, answer in rounds
            for message in ({"role": "user", "content": query}, {"role": "assistant", "content": answer})
        ]

    @property
    def tools_supported(self) -> bool:
        """Whether the family's chat format has tools (ChatGLM3, GLM-4)."""
        return has_tools(self.family)

    def arguments_text(self, call: ToolCall) -> str:
        """A call's arguments as the family writes them (GLM-4's JSON, ChatGLM3's `tool_call(k=v)`)."""
        return self.family.arguments_text(call)

    @property
    def pending_call(self) -> ToolCall | None:
        """The tool call the last answer was, while it waits for its result (the next message sent)."""
        last = self.messages[-1] if self.messages else {}
        return last.get("tool_call")

    @property
    def answering(self) -> bool:
        """Whether a turn is being generated now (its answer is not yet in `history`)."""
        return self._active is not None

    @property
    def max_sequence_length(self) -> int:
        """The model's positions, from its config (`max_position_embeddings`: ChatGLM-6B's
        max_sequence_length, ChatGLM2/3's seq_length)."""
        return getattr(self.model.config, "max_position_embeddings", None) or DEFAULT_MAX_SEQUENCE_LENGTH

    @property
    def pre_seq_len(self) -> int:
        return self.model.config.pre_seq_len or 0

    def prompt_budget(self, settings: ChatSettings) -> int:
        """Prompt tokens that fit beside the prefix and the answer in the model's positions."""
        return self.max_sequence_length - self.pre_seq_len - settings.max_new_tokens

    def stream(
        self, query: str, settings: ChatSettings | None = None, cancel: threading.Event | None = None
    ) -> ChatTurn:
        """Start answering `query`; iterate the returned turn for the answer's text as it is generated.

        While a tool call waits for its result (`pending_call`), `query` is that result: the model reads it as
        the family's observation. An unfinished earlier turn is cancelled first. `cancel` (or `turn.cancel()`)
        stops the answer early.
        """
        if not query.strip():
            raise ChatError("The message is empty; type something to ask.")
        settings = settings or self.settings
        self._stop_active()
        message = {"role": "observation" if self.pending_call else "user", "content": query}
        budget = self.prompt_budget(settings)
        trimmed, kept = 0, self.messages
        prompt_ids = self._prompt_ids(kept, message)
        while len(prompt_ids) > budget and (shorter := without_oldest_round(kept, message)) is not None:
            trimmed, kept = trimmed + 1, shorter
            prompt_ids = self._prompt_ids(kept, message)
        if len(prompt_ids) > budget:
            raise ChatError(
                f"The message takes {len(prompt_ids)} tokens, but only {max(budget, 0)} fit beside an answer of "
                f"{settings.max_new_tokens} tokens{' and the prefix' if self.pre_seq_len else ''}: "
                "shorten it or lower the answer length."
            )
        self.messages = kept
        names = {tool["function"]["name"] for tool in self.tools} if self.tools else None
        turn = ChatTurn(self, message, prompt_ids, settings, trimmed, cancel or threading.Event(), names)
        self._active = turn
        return turn

    def _prompt_ids(self, messages: list[dict], message: dict) -> list[int]:
        """The family's chat prompt for the conversation and the new message: its prompt with tools while there
        are tools, calls or results (as the server builds it), else its plain chat prompt."""
        conversation = [*messages, message]
        if self.tools or any(m["role"] == "observation" or "tool_call" in m for m in conversation):
            system = [{"role": "system", "content": self.system}] if self.system else []
            return self.family.tool_prompt_ids(self.tokenizer, [*system, *conversation], self.tools)
        return self.family.chat_prompt_ids(
            self.tokenizer, message["content"], conversation_rounds(messages), self.system
        )

    def ask(self, query: str, settings: ChatSettings | None = None) -> ChatTurn:
        """Answer `query` whole (no streaming); returns the finished turn."""
        turn = self.stream(query, settings)
        for _ in turn:
            pass
        return turn

    def use_system(self, system: str | None) -> None:
        """Start every later turn's prompt with `system` (empty or None: no system prompt); a family that has
        none refuses one here, not mid-chat."""
        if system:
            self.family.chat_prompt_ids(self.tokenizer, "", [], system=system)
        self.system = system or None

    def use_tools(self, tools: list[dict] | None) -> None:
        """Describe `tools` in every later turn's prompt, so that the model may answer with a call (None or an
        empty list: no tools). Each is an OpenAI definition or a bare function (ChatGLM3's published list); a
        family whose chat format has no tools refuses them here, not mid-chat."""
        if not tools:
            self.tools = None
            return
        _check_has_tools(self.family, self.family_title, without="them")
        try:
            self.tools = function_tools(tools)
        except ValueError as error:
            raise ChatError(f"The tools cannot be used: {error}.") from None

    def clear(self) -> None:
        """Forget the conversation (the prefix and the tools stay)."""
        self._stop_active()
        self.messages = []

    def use_prefix(self, checkpoint: str | Path | None) -> None:
        """Answer with `checkpoint`'s prefix from the next turn on, or with none (`None`).

        Only the prefix encoder is replaced; the base weights are untouched. A checkpoint already in the
        cache reads no file.
        """
        from glmcore.prefix import install_prefix_checkpoint, set_prefix

        self._stop_active()
        if checkpoint is None:
            set_prefix(self.model, None)
            self.prefix = None
            return
        install_prefix_checkpoint(self.model, checkpoint, read=self.prefixes.get)
        self.prefix = self.prefixes.key(checkpoint)

    def use_checkpoint(self, checkpoint: str | Path | None) -> None:
        """Answer with `checkpoint` from the next turn on: a P-tuning prefix or a LoRA adapter, whichever it holds
        (the adapter's low-rank updates are added to the base's outputs, never merged into its weights); `None`
        for the model alone."""
        from glmcore.adapters import attach_adapter, is_adapter_checkpoint

        self._stop_active()
        if self._adapter_updates is not None:
            self._adapter_updates.remove()
            self._adapter_updates, self.adapter = None, None
        if checkpoint is None or not is_adapter_checkpoint(Path(checkpoint).expanduser()):
            self.use_prefix(checkpoint)
            return
        self.use_prefix(None)
        path = Path(checkpoint).expanduser().resolve()
        self._adapter_updates = attach_adapter(self.model, path)
        self.adapter = path

    def _stop_active(self) -> None:
        if self._active is not None and not self._active.finished:
            self._active.close()
        self._active = None

    def decoder(self, tokens: int = 0):
        """A static-cache decoder for one conversation of `context` tokens, kept between turns (its CUDA graph is
        captured once); `tokens` (prompt + answer) beyond what it holds grow the context first, at least
        doubling it, up to the model's positions.

        Switching the prefix or the adapter builds a new one: its cache is sized for the prefix it was made with,
        and a captured graph reads the adapter weights it was captured with.
        """
        if tokens + self.pre_seq_len > self.context:
            self.context = min(self.max_sequence_length, max(tokens + self.pre_seq_len, 2 * self.context))
        capacity = max(1, self.context - self.pre_seq_len)
        made_for = (self.model.transformer.prefix_encoder, self._adapter_updates)
        previous = self._decoder_made_for or (None, None)
        if (
            self._decoder is None
            or self._decoder.capacity != capacity
            or any(now is not then for now, then in zip(made_for, previous, strict=True))
        ):
            self._decoder = None  # the old cache goes before the new one is allocated
            self._decoder = self.family.new_decoder(self.model, batch=1, capacity=capacity)
            self._decoder_made_for = made_for
        return self._decoder

    def _turn_ended(self, turn: ChatTurn) -> None:
        """Record a turn that finished: what was sent, the answer (without its reasoning) and the call."""
        if turn is self._active:
            self._active = None
        if turn.cancelled or turn._error is not None:
            return
        self.messages.append(turn.message)
        answer = turn.reply.answer
        if answer or turn.call is None:
            self.messages.append({"role": "assistant", "content": answer})
        if turn.call is not None:
            self.messages.append({"role": "assistant", "tool_call": turn.call})


def conversation_rounds(messages: list[dict]) -> list[tuple[str, str]]:
    """(user message, last text answer) for each user message of a conversation."""
    rounds: list[list[str]] = []
    for message in messages:
        if message["role"] == "user":
            rounds.append([message["content"], ""])
        elif message["role"] == "assistant" and "content" in message and rounds:
            rounds[-1][1] = message["content"]
    return [(query, answer) for query, answer in rounds]


def without_oldest_round(messages: list[dict], message: dict) -> list[dict] | None:
    """The conversation without its oldest round (a user message and what followed it up to the next one), or
    None when none can go: the round a tool result (`message`) belongs to stays."""
    starts = [index for index, each in enumerate(messages) if each["role"] == "user"]
    keep = 1 if message["role"] == "observation" else 0
    if len(starts) <= keep:
        return None
    return messages[starts[1] :] if len(starts) > 1 else []
