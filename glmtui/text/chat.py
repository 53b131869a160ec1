"""How a chat reads, for `glmtui chat` and the Chat screen alike: who said what, a thinking model's reasoning apart
from its answer, a tool call and the result the user sends back."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text

REASONING_LABEL = "thinking"
REASONING_STYLE = "dim italic"
CALL_STYLE = "bold magenta"
SPEAKERS = {"user": ("you ", "bold cyan"), "observation": ("tool ", "bold yellow")}
ANSWER_SPEAKER = ("glm ", "bold green")
TOOLS_PLACEHOLDER = "optional: a JSON file of tools (OpenAI's or the family's list)"


@dataclass
class Exchange:
    """One message sent and the answer to it as far as it has come: what the Chat screen draws."""

    sent: str
    role: str = "user"
    """"user", or "observation" for a tool's result."""
    answer: str = ""
    reasoning: str | None = None
    call: tuple[str, str] | None = None
    """The tool call the answer was: its name and its arguments as the family writes them."""


def call_text(name: str, arguments: str) -> Text:
    """A tool call as one line: `tool call get_weather {"city": "Paris"}`."""
    return Text.assemble(("tool call ", CALL_STYLE), f"{name} {arguments}")


def result_hint(name: str) -> str:
    return f"Send {name}'s result as your next message: the model reads it as the tool's observation."


def result_placeholder(name: str) -> str:
    return f"Type {name}'s result and press enter"


def transcript_text(exchanges: list[Exchange]) -> Text:
    """The conversation: each message, the reasoning (dimmed, labelled), the answer and the call. A model's
    output (any bytes at all) is never read as markup."""
    text = Text()
    for index, exchange in enumerate(exchanges):
        if index:
            text.append("\n")
        label, style = SPEAKERS.get(exchange.role, SPEAKERS["user"])
        text.append(label, style=style)
        text.append(f"{exchange.sent}\n")
        if exchange.reasoning:
            text.append(f"{REASONING_LABEL} ", style=f"bold {REASONING_STYLE}")
            text.append(f"{exchange.reasoning}\n", style=REASONING_STYLE)
        if exchange.answer or exchange.call is None:
            text.append(ANSWER_SPEAKER[0], style=ANSWER_SPEAKER[1])
            text.append(f"{exchange.answer}\n")
        if exchange.call is not None:
            text.append_text(call_text(*exchange.call))
            text.append("\n")
    return text
