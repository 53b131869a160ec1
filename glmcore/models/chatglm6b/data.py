"""Training rows, evaluation prompts and references exactly as ChatGLM-6B's ptuning/main.py builds them.

Training rows: `a = encode(prompt)[:max_source_length-1]`, `b = encode(answer)[:max_target_length-2]`,
`ids = a + [gMASK, <sop>] + b + [<eop>]`, labels -100 up to `<sop>` and on every pad id, right padding to
`max_source_length + max_target_length`. Evaluation prompts are cut to
`max_source_length - 2` tokens before `[gMASK, <sop>]`; references are the response tokenized with
truncation at `max_target_length` and decoded back, which is what the published numbers score against.
The prompt text is `Example.prompt`: the bare query, or `[Round i]\\n问：q\\n答：r\\n` rounds before it.
"""

from __future__ import annotations

from glmcore.examples import IGNORE_INDEX, Example, conversation_example, turns_example

TITLE = "ChatGLM-6B"


def training_features(
    tokenizer, example: Example, max_source_length: int, max_target_length: int
) -> dict[str, list[int]]:
    """input_ids and labels of one training row, right-padded to source + target length."""
    example = turns_example(example, TITLE)
    source = tokenizer.encode(example.prompt, add_special_tokens=False)[: max_source_length - 1]
    target = tokenizer.encode(example.response, add_special_tokens=False)[: max_target_length - 2]
    input_ids = tokenizer.build_inputs_with_special_tokens(source, target)
    context_length = input_ids.index(tokenizer.bos_token_id)
    # As the published ignore_pad_token_for_loss: every pad id is unlabelled, a literal `<pad>` in the answer too.
    answer = [
        IGNORE_INDEX if token == tokenizer.pad_token_id else token for token in input_ids[context_length:]
    ]
    labels = [IGNORE_INDEX] * context_length + answer
    padding = max_source_length + max_target_length - len(input_ids)
    return {
        "input_ids": input_ids + [tokenizer.pad_token_id] * padding,
        "labels": labels + [IGNORE_INDEX] * padding,
    }


def conversation_features(
    tokenizer, messages: list[dict], tools: object, max_input_length: int, max_output_length: int
) -> dict[str, list[int]]:
    """A conversation of user/assistant turns as the training row of its last answer, the turns before it as
    history: the only conversation ptuning/main.py knows (anything more is refused)."""
    example = conversation_example(messages, tools)
    return training_features(tokenizer, example, max_input_length, max_output_length)


def evaluation_prompt_ids(tokenizer, example: Example, max_source_length: int) -> list[int]:
    """The prompt cut to max_source_length - 2 tokens, then [gMASK, <sop>]."""
    example = turns_example(example, TITLE)
    source = tokenizer.encode(example.prompt, add_special_tokens=False)[: max_source_length - 2]
    return tokenizer.build_inputs_with_special_tokens(source)


def reference_text(tokenizer, response: str, max_target_length: int) -> str:
    """The label as the published evaluation scores it: tokenized with truncation, decoded back."""
    target = tokenizer.encode(response, add_special_tokens=False)[: max_target_length - 2]
    return tokenizer.decode(tokenizer.build_inputs_with_special_tokens(target), skip_special_tokens=True)
