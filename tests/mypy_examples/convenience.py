"""LM Studio's convenience API, ported by changing the import (checked by mypy --strict)."""

from __future__ import annotations

import modelhost as lms


def does_chat_fit_in_context(model: lms.LLM, chat: lms.Chat) -> bool:
    formatted = model.apply_prompt_template(chat)
    token_count = len(model.tokenize(formatted))
    return token_count < model.get_context_length()


def main() -> None:
    lms.configure_default_client("/tmp/models")
    model = lms.llm("smollm2-135m-instruct", config={"contextLength": 8192, "gpu": {"ratio": 0.5}})
    chat = lms.Chat("You are a resident AI philosopher.")
    chat.add_user_message("What is the meaning of life?")
    result = model.respond(chat, config={"temperature": 0.6, "maxTokens": 50}, on_message=chat.append)
    print(result.model_info.display_name, result.stats.time_to_first_token_sec)
    print(does_chat_fit_in_context(model, chat))

    tokens: list[int] = model.tokenize("Hello, world!")
    many: list[list[int]] = model.tokenize(["Hello", "world"])
    print(tokens, many, model.count_tokens("Hello"))

    stream = model.complete_stream("My name is", config={"maxTokens": 100, "stopStrings": ["\n"]})
    for fragment in stream:
        if len(fragment.content) > 100:
            stream.cancel()
    print(stream.result().stats.stop_reason)

    for downloaded in lms.list_downloaded_models("llm"):
        print(downloaded.model_key, downloaded.size_bytes)
    for loaded in lms.list_loaded_models():
        info: lms.ModelInstanceInfo = loaded.get_info()
        print(info.identifier, info.context_length, loaded.get_load_config())

    embedding = lms.embedding_model("all-minilm-l6-v2").embed("Hello, world!")
    print(embedding.shape)
    model.unload()


if __name__ == "__main__":
    main()
