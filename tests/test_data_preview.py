"""The Data screen's preview: a row as `conversation_features` builds it for each family, the learned tokens
coloured; GLM-4's `messages` files (system tools, a tool call, an observation) read beside the other forms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.app import columns_fit_rows, make_app, make_workspace, settle
from support.snapshot_root import fixed_root, module_on_a_clean_root
from support.waiting import wait_until_in_app

from glmcore.data import DataError, Example, load_examples, preview_tokens, training_features
from glmcore.examples import IGNORE_INDEX
from glmcore.models import FAMILIES

SNAPSHOT_ROOT = fixed_root("glmtui-data-preview-workspace")
clean_snapshot_root = module_on_a_clean_root(SNAPSHOT_ROOT)

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
GLM4_ROW = {
    "messages": [
        {"role": "system", "content": "", "tools": TOOLS},
        {"role": "user", "content": "北京天气"},
        {
            "role": "assistant",
            "content": json.dumps({"name": "get_weather", "arguments": {"city": "北京"}}, ensure_ascii=False),
        },
        {"role": "observation", "content": "晴"},
        {"role": "assistant", "content": "北京晴"},
    ]
}
"""A row of GLM-4's fine-tuning demo (finetune_demo/README): the tools on the system message, the call as the
assistant's JSON, its result as an observation."""


def pieces(tokenizer, ids: list[int]) -> str:
    """The tokenizer's pieces of `ids` joined (GLM-4's are bytes); a byte-level tokenizer.json's, its own decode,
    which loses nothing."""
    if type(getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)).__name__ == "ByteLevel":
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    parts = tokenizer.convert_ids_to_tokens(ids)
    return b"".join(part if isinstance(part, bytes) else part.encode() for part in parts).decode()


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_each_family_previews_the_row_training_builds_with_only_the_answer_learned(family, tiny_family_dir):
    import glmcore

    tokenizer = glmcore.load_tokenizer(tiny_family_dir(family))
    example = Example("类型#裤", "宽松的裤子")
    shown = preview_tokens(tokenizer, example, 32, 16)

    features = training_features(tokenizer, example, 32, 16)
    length = len(features["input_ids"])
    while features["input_ids"][length - 1] == tokenizer.pad_token_id and features["labels"][length - 1] < 0:
        length -= 1
    rows = list(zip(features["input_ids"][:length], features["labels"][:length], strict=True))
    for learned in (True, False):
        ids = [token for token, label in rows if (label != IGNORE_INDEX) == learned]
        assert "".join(token.text for token in shown if token.learned == learned) == pieces(tokenizer, ids)
    flags = [token.learned for token in shown]
    first = flags.index(True)
    assert not any(flags[:first]) and all(flags[first:]), (
        "the prompt is not learned, the answer to its end is"
    )
    learned = "".join(token.text for token in shown[first:])
    assert "宽松" in learned and "类型" not in learned


def test_a_glm4_messages_file_is_read_and_only_its_last_answer_is_learned(glm4_tokenizer, tmp_path: Path):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(GLM4_ROW, ensure_ascii=False) + "\n", encoding="utf-8")
    (example,) = load_examples(data).examples
    assert (example.query, example.response) == ("北京天气", "北京晴")

    shown = preview_tokens(glm4_tokenizer, example, 512, 64)
    learned = [token.text for token in shown if token.learned]
    assert learned[-1] == "<|user|>"
    assert "<|observation|>" in [token.text for token in shown if not token.learned]
    assert "get_weather" not in "".join(learned), "the demo learns the last answer only (combine)"


def test_a_glm4_observation_that_is_not_text_is_refused_at_its_line(tmp_path: Path):
    data = tmp_path / "train.jsonl"
    bad = {"messages": [*GLM4_ROW["messages"][:3], {"role": "observation", "content": {"weather": "晴"}}]}
    data.write_text(
        "\n".join(json.dumps(row, ensure_ascii=False) for row in (GLM4_ROW, bad)), encoding="utf-8"
    )
    with pytest.raises(DataError) as error:
        load_examples(data)
    assert str(error.value) == (
        f"{data}:2: 'messages', message 4: 'content' holds an object, not text; "
        'write it as {"role": "user", "content": "..."}.'
    )


SIZES = [(80, 24), (120, 40)]


@pytest.mark.parametrize("size", SIZES)
def test_the_data_screen_colours_the_learned_tokens_of_a_glm4_row(
    snap_compare, size: tuple[int, int]
) -> None:
    from textual.widgets import Input, Static

    from glmcore.models.glm4.tiny import write_tiny_checkpoint

    workspace = make_workspace(SNAPSHOT_ROOT, with_model=False)
    model = write_tiny_checkpoint(workspace.models_dir / "tiny-glm4", init_std=0.5, seed=2)
    data = workspace.data_dir / "tools" / "train.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text(json.dumps(GLM4_ROW, ensure_ascii=False) + "\n", encoding="utf-8")
    app = make_app(workspace)

    async def preview(pilot) -> None:
        await pilot.press("f3")
        await settle(pilot)
        assert app.screen.query_one("#data-file", Input).value == str(data)
        assert app.screen.query_one("#data-model", Input).value == str(model)
        app.screen.query_one("#data-source-length", Input).value = "512"  # GLM-4's tools prompt is long
        for field in app.screen.query(Input):
            field.cursor_blink = False
        await pilot.press("ctrl+g")
        await settle(pilot)
        stats = app.screen.query_one("#data-stats")
        await wait_until_in_app(pilot, lambda: columns_fit_rows(stats), "the statistics' columns sized")
        shown = app.screen.query_one("#data-preview-text", Static).render()  # a token is never markup
        learned = "".join(shown.plain[span.start : span.end] for span in shown.spans if span.style.bold)
        assert learned.startswith("learned tokens") and learned.endswith("晴<|user|>")
        assert "<|observation|>" not in learned

    assert snap_compare(app, terminal_size=size, run_before=preview)
