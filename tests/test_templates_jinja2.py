"""Gemma 3's own chat template (from google/gemma-3-*-it's tokenizer_config.json, which some Gemma 3 GGUFs carry)
renders byte-identical to jinja2, as llama-cpp-python renders GGUF templates; a template that writes BOS itself does
not get a second one from the tokenizer when respond() tokenizes it (llama.cpp's chat does the same).

The template runs on a tiny model file (test_hostile_files.tiny_llama, with the template swapped in): what is checked
is the rendering, which only needs the vocabulary's BOS and EOS texts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
import modelhost
import pytest
from gguf_writer import BOOL, KV, STRING
from test_hostile_files import tiny_llama

GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)

CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "  Name three colors.\n"}],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "¿Qué tal? 🌙"},
    ],
    [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],  # not alternating: raises
    [{"role": "assistant", "content": "first"}],  # starts with the model: raises
]


def jinja2_render(template: str, bos: str, eos: str, messages: list[dict[str, str]], add_gen: bool) -> str:
    """The template as llama-cpp-python's Jinja2ChatFormatter renders it."""

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    compiled = env.from_string(template)
    return compiled.render(
        messages=messages,
        bos_token=bos,
        eos_token=eos,
        add_generation_prompt=add_gen,
        raise_exception=raise_exception,
    )


@pytest.fixture(scope="module")
def gemma_template_llm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    g = tiny_llama()
    g.kvs = [kv for kv in g.kvs if kv.key not in ("tokenizer.chat_template", "tokenizer.ggml.add_bos_token")]
    g.kvs += [KV("tokenizer.chat_template", STRING, GEMMA3_TEMPLATE), KV("tokenizer.ggml.add_bos_token", BOOL, True)]
    path: Path = g.write(tmp_path_factory.mktemp("gemma-template") / "tiny.gguf")
    with modelhost.Client() as client:
        llm = client.llm.load_new_instance(str(path), "gemma-template", ttl=None)
        yield llm
        llm.unload()


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_gemma3_template_renders_as_jinja2(
    gemma_template_llm: Any, messages: list[dict[str, str]], add_generation_prompt: bool
) -> None:
    # tiny_llama's vocabulary: BOS is <|im_start|> (id 1), EOS <|im_end|> (id 2).
    try:
        expected: str | None = jinja2_render(
            GEMMA3_TEMPLATE, "<|im_start|>", "<|im_end|>", messages, add_generation_prompt
        )
    except jinja2.exceptions.TemplateError as e:
        expected, error = None, str(e)
    if expected is None:
        with pytest.raises(modelhost.ModelHostError, match="Conversation roles must alternate"):
            gemma_template_llm._instance.apply_template(messages, add_generation_prompt)
        assert "alternate" in error
    else:
        assert gemma_template_llm._instance.apply_template(messages, add_generation_prompt) == expected


def test_a_bos_the_template_writes_is_not_doubled(gemma_template_llm: Any) -> None:
    messages = CONVERSATIONS[0]
    rendered = gemma_template_llm.apply_prompt_template(messages)
    assert rendered.startswith("<|im_start|><start_of_turn>user")
    # Tokenized as text, the tokenizer's BOS and the template's both appear...
    as_text = gemma_template_llm.tokenize(rendered)
    assert as_text[:2] == [1, 1]
    # ...but a reply's prompt has one, as llama.cpp's chat builds it.
    result = gemma_template_llm.respond(messages, {"maxTokens": 1, "temperature": 0})
    assert result.stats.prompt_tokens_count == len(as_text) - 1
