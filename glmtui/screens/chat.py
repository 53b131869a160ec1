"""The Chat screen: talk to the base model or a run's prefix checkpoint, answers streamed as they come.

The model loads in a thread worker through ``glmcore.chat.ChatSession``; each answer streams from another worker
that posts the text so far; ctrl+x sets the cancel event the stream watches. Switching the checkpoint swaps only
the prefix of the loaded model. A message sent while the model loads waits and goes out once it is ready; the
status line says what is loading and for how long.

For a family whose chat format has tools (ChatGLM3, GLM-4) a Tools field takes a JSON file of tools; an answer
that is a call shows as one, and the next message is its result (the field says so). A thinking model's (GLM-Z1's)
reasoning shows in its own dimmed block before its answer.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Label, Select, Static
from textual.worker import Worker, WorkerState

from glmcore.chat import ChatError, ChatPlan, ChatSession, ChatSettings, plan_chat
from glmcore.errors import GlmError
from glmcore.runs import Run
from glmtui.screens.base import WorkbenchScreen
from glmtui.text.chat import TOOLS_PLACEHOLDER, Exchange, result_placeholder, transcript_text
from glmtui.text.figures import format_duration

BASE = "base"
MESSAGE_PLACEHOLDER = "Type a message and press enter"


@dataclass
class ChatLoaded(Message):
    """The model and prefix are loaded: the session to chat with, and what it is, in words."""

    session: ChatSession
    description: str


@dataclass
class ChatLoadStep(Message):
    """The model load reached ``step`` ("the tokenizer", "the weights")."""

    step: str


@dataclass
class AnswerGrew(Message):
    """The answer so far, its reasoning apart, and the call it was (``done`` once it is whole), from the
    generating worker."""

    text: str
    done: bool
    reasoning: str | None = None
    call: tuple[str, str] | None = None


class ChatScreen(WorkbenchScreen):
    """enter sends; ctrl+l clears the history; ctrl+x stops an answer; the select switches the prefix."""

    NAME = "chat"
    BINDINGS = [
        Binding("ctrl+l", "clear", "Clear", id="chat-clear", tooltip="Forget the conversation"),
        Binding(
            "ctrl+x",
            "cancel",
            "Stop answer",
            id="chat-cancel",
            priority=True,  # over the message box's cut
            tooltip="Stop the answer being written",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.run: Run | None = None
        self.session: ChatSession | None = None
        self.transcript: list[Exchange] = []
        self._tools_file: str = ""
        """The Tools field's value the session's tools were read from."""
        self._cancel = threading.Event()
        self.waiting: str | None = None
        """A message sent while the model loads: it goes out as soon as the model is ready."""
        self._loading: tuple[str, float] | None = None
        """What the load is reading now and when the load began, while a model loads."""

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="chat-top"):
            yield Label("Prefix:")
            yield Select[str]([("base model", BASE)], id="chat-checkpoint", allow_blank=False)
            yield Label("Temperature:")
            yield Input("0.95", id="chat-temperature", type="number")
            yield Label("Top p:")
            yield Input("0.7", id="chat-top-p", type="number")
        with Horizontal(id="chat-system-row"):
            # Shown for families whose chat format has a system role (ChatGLM3, GLM-4) once their model is loaded.
            yield Label("System:")
            yield Input(placeholder="optional: how the assistant should behave", id="chat-system")
        with Horizontal(id="chat-tools-row"):
            # Shown for families whose chat format has tools (ChatGLM3, GLM-4) once their model is loaded.
            yield Label("Tools:")
            yield Input(placeholder=TOOLS_PLACEHOLDER, id="chat-tools")
        yield Static("Pick a run on the Runs screen (F5) and press c.", id="chat-status")
        with VerticalScroll(id="chat-log"):
            yield Static("", id="chat-transcript")
        yield Input(placeholder=MESSAGE_PLACEHOLDER, id="chat-input")

    def run_in_view(self) -> Run | None:
        return self.run

    def select_run(self, run: Run) -> None:
        """Chat with ``run``'s model, the checkpoint it stands for picked (a different model is loaded afresh)."""
        if self.run is None or run.config.model_path != self.run.config.model_path:
            self.session = None
        self.run = run
        if self.is_mounted:
            self._fill()

    def on_mount(self) -> None:
        self._fill()
        self.set_interval(1.0, self._show_loading)

    def _fill(self) -> None:
        if self.run is None:
            return
        checkpoints = self.run.checkpoints()
        select = self.query_one("#chat-checkpoint", Select)
        select.set_options([("base model", BASE)] + [(c.path.name, str(c.path)) for c in checkpoints])
        try:  # the checkpoint the run stands for (docs/runs.md): its best when marked, else its latest
            select.value = str(self.run.default_checkpoint().path)
        except GlmError:
            select.value = BASE
        self._load(self._checkpoint())

    def _checkpoint(self) -> Path | None:
        value = self.query_one("#chat-checkpoint", Select).value
        return None if value in (BASE, Select.BLANK) else Path(str(value))

    @work(thread=True, exclusive=True, exit_on_error=False, group="chat-load")
    def load_session(self, plan: ChatPlan) -> None:
        """Load the plan's model once (later calls only swap the prefix or adapter) and install its checkpoint."""
        from glmcore.chat import ChatSession

        session = self.session
        if session is None:
            from glmcore.models.loading import load_model, load_tokenizer

            self.post_message(ChatLoadStep("the tokenizer"))
            tokenizer = load_tokenizer(plan.model, family=plan.family)
            self.post_message(ChatLoadStep("the weights"))
            model = load_model(plan.model, quantization_bit=plan.quantization_bit, family=plan.family)
            session = ChatSession(model, tokenizer)
        self.post_message(ChatLoadStep("the prefix or adapter"))
        session.use_checkpoint(plan.checkpoint)
        description = plan.checkpoint.name if plan.checkpoint else "the base model"
        self.post_message(ChatLoaded(session, description))

    def _status(self, text: str | Text) -> None:
        self.query_one("#chat-status", Static).update(text)

    def on_chat_load_step(self, message: ChatLoadStep) -> None:
        started = self._loading[1] if self._loading else time.monotonic()
        self._loading = (message.step, started)
        self._show_loading()

    def _show_loading(self) -> None:
        """While a model loads: what it reads, for how long so far, and what happens to a waiting message."""
        if self._loading is None or self.run is None:
            return
        step, started = self._loading
        waiting = "; your message goes out once it is ready" if self.waiting else "…"
        self._status(
            f"Loading {self.run.config.model_path.name} ({step}, {format_duration(time.monotonic() - started)})"
            f"{waiting}"
        )

    def on_chat_loaded(self, message: ChatLoaded) -> None:
        if message.session is not self.session:  # a model loaded afresh has no tools yet: the field's go in
            self._tools_file = ""
        self.session = message.session
        self._loading = None
        self.query_one("#chat-system-row").display = message.session.system_role
        self.query_one("#chat-tools-row").display = message.session.tools_supported
        model = self.run.config.model_path.name if self.run else "the model"
        self._status(f"Chatting with {model} ({message.session.family_title}), {message.description}.")
        self.query_one("#chat-input", Input).focus()
        if self.waiting is not None:
            query, self.waiting = self.waiting, None
            self._send(query)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A load that failed (the app shows why) takes the waiting message back into the field."""
        super().on_worker_state_changed(event)
        if event.worker.group == "chat-load" and event.state is WorkerState.ERROR:
            self._loading = None
            if self.waiting is not None:
                self.query_one("#chat-input", Input).value, self.waiting = self.waiting, None
                if self.transcript and self.transcript[-1] == Exchange(
                    self.query_one("#chat-input", Input).value
                ):
                    self.transcript.pop()
                    self._draw()
            self._status(
                "The model did not load; pick a run on the Runs screen (F5) and press c to try again."
            )

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id != "chat-checkpoint":
            return
        # The next thing typed after choosing a prefix is a message.
        self.query_one("#chat-input", Input).focus()
        if self.run is not None and self.session is not None:
            self._load(self._checkpoint())

    def _load(self, checkpoint: Path | None) -> None:
        """Load the run's model (or only swap the prefix): from now until it is ready, messages wait. A run
        chat cannot use is refused before anything loads, with the CLI's sentence (glmcore.chat.plan_chat)."""
        assert self.run is not None
        try:
            plan = plan_chat(self.run, checkpoint=checkpoint)
        except ChatError as error:
            self._status(Text(str(error)))
            self.notify(str(error), severity="error")
            return
        self._loading = ("the model", time.monotonic())
        self._show_loading()
        self.load_session(plan)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id in ("chat-system", "chat-tools"):
            # The system prompt and the tools go with the next message.
            self.query_one("#chat-input", Input).focus()
            return
        if event.input.id != "chat-input" or not event.value.strip():
            return
        if self.session is None and self._loading is None:
            self.notify(
                "No model is chosen yet: pick a run on the Runs screen (F5) and press c.", severity="warning"
            )
            return
        if self.waiting is not None:
            self.notify("One message already waits for the model; this one stays in the field.")
            return
        if self.chat_settings() is None:
            return
        query = event.value.strip()
        event.input.value = ""
        if self._loading is not None:
            self.waiting = query
            self.transcript.append(Exchange(query))
            self._draw()
            self._show_loading()
            return
        self._send(query)

    def _send(self, query: str) -> None:
        """Ask the loaded model ``query`` with the settings of the fields (and the System field, if shown)."""
        settings = self.chat_settings()
        if settings is None or not self._use_tools_field():
            if self.transcript and self.transcript[-1] == Exchange(query):
                self.transcript.pop()
            self.query_one("#chat-input", Input).value = query
            self._draw()
            return
        if self.session.system_role:  # type: ignore[attr-defined]
            system = self.query_one("#chat-system", Input).value.strip()
            self.session.use_system(system)  # type: ignore[attr-defined]
        role = "observation" if self.session.pending_call else "user"  # type: ignore[attr-defined]
        if not self.transcript or self.transcript[-1] != Exchange(query):
            self.transcript.append(Exchange(query, role))
        self.transcript[-1].role = role
        self.query_one("#chat-input", Input).placeholder = MESSAGE_PLACEHOLDER
        self._cancel = threading.Event()
        self.answer(query, settings, self._cancel)
        self._draw()

    def _use_tools_field(self) -> bool:
        """Read the Tools field's file into the session when it changed; False after saying what is wrong with
        it (the engine's sentence)."""
        if not self.session.tools_supported:  # type: ignore[attr-defined]
            return True
        path = self.query_one("#chat-tools", Input).value.strip()
        if path == self._tools_file:
            return True
        from glmcore.tool_calls import read_tools_file

        try:
            self.session.use_tools(read_tools_file(path) if path else None)  # type: ignore[attr-defined]
        except GlmError as error:
            self.notify(str(error), severity="error", markup=False)
            return False
        self._tools_file = path
        return True

    def chat_settings(self) -> ChatSettings | None:
        """The settings of the fields, or None after saying what is wrong with them (the engine's checks)."""
        values = {}
        for name, field_id, label in (
            ("temperature", "#chat-temperature", "Temperature"),
            ("top_p", "#chat-top-p", "Top p"),
        ):
            text = self.query_one(field_id, Input).value.strip()
            try:
                values[name] = float(text)
            except ValueError:
                self.notify(f"{label} {text!r} is not a number; e.g. 0.95 or 0.7.", severity="error")
                return None
        try:
            return ChatSettings(**values)
        except ChatError as error:
            self.notify(str(error), severity="error")
            return None

    @work(thread=True, exclusive=True, exit_on_error=False, group="chat-answer")
    def answer(self, query: str, settings: ChatSettings, cancel: threading.Event) -> None:
        session: ChatSession = self.session  # type: ignore[assignment]
        turn = session.stream(query, settings, cancel)
        for _ in turn:
            reply = turn.reply
            self.post_message(AnswerGrew(reply.answer, done=False, reasoning=reply.reasoning))
        call = (turn.call.name, session.arguments_text(turn.call)) if turn.call else None
        self.post_message(AnswerGrew(turn.reply.answer, done=True, reasoning=turn.reply.reasoning, call=call))

    def on_answer_grew(self, message: AnswerGrew) -> None:
        if self.transcript:
            exchange = self.transcript[-1]
            exchange.answer, exchange.reasoning, exchange.call = message.text, message.reasoning, message.call
        if message.call is not None:
            self.query_one("#chat-input", Input).placeholder = result_placeholder(message.call[0])
        self._draw()

    def _draw(self) -> None:
        """The transcript as text (glmtui.text.chat): a model's output is never read as markup."""
        self.query_one("#chat-transcript", Static).update(transcript_text(self.transcript))
        self.query_one("#chat-log", VerticalScroll).scroll_end(animate=False)

    def action_clear(self) -> None:
        self.transcript = []
        self.query_one("#chat-input", Input).placeholder = MESSAGE_PLACEHOLDER
        if self.session is not None:
            self.session.clear()  # type: ignore[attr-defined]
        self._draw()

    def action_cancel(self) -> None:
        self._cancel.set()
