"""The Chat helper (pure Python), as LM Studio's."""

from __future__ import annotations

import copy

import modelhost as lms
import pytest
from modelhost.chat import ChatMessage, to_messages


def test_chat_with_system_prompt_and_messages() -> None:
    chat = lms.Chat("You are a resident AI philosopher.")
    chat.add_user_message("What is the meaning of life?")
    chat.add_assistant_response("42.")
    chat.add_user_message("Why?")
    assert chat.to_messages() == [
        {"role": "system", "content": "You are a resident AI philosopher."},
        {"role": "user", "content": "What is the meaning of life?"},
        {"role": "assistant", "content": "42."},
        {"role": "user", "content": "Why?"},
    ]
    assert len(chat) == 4


def test_chat_without_system_prompt_is_empty() -> None:
    assert lms.Chat().to_messages() == []
    assert lms.Chat(None).to_messages() == []


def test_from_history_dict_str_list_and_chat() -> None:
    history = {
        "messages": [
            {"role": "system", "content": "You are a resident AI philosopher."},
            {"role": "user", "content": "What is the meaning of life?"},
        ]
    }
    chat = lms.Chat.from_history(history)
    assert chat.to_messages() == history["messages"]
    assert lms.Chat.from_history("Hi").to_messages() == [{"role": "user", "content": "Hi"}]
    assert lms.Chat.from_history(history["messages"]).to_messages() == history["messages"]
    assert lms.Chat.from_history(chat) == chat
    assert lms.Chat.from_history(chat) is not chat


def test_from_history_accepts_lmstudio_text_parts() -> None:
    chat = lms.Chat.from_history(
        {
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                {"role": "user", "content": {"text": "Hello"}},
                {"role": "assistant", "content": [{"type": "text", "text": "Hi!"}]},
            ]
        }
    )
    assert chat.to_messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!"},
    ]


@pytest.mark.parametrize(
    "bad",
    [
        {"messages": [{"role": "robot", "content": "beep"}]},
        {"messages": [{"role": "user"}]},
        {"messages": "not a list"},
        {"no_messages": []},
        {"messages": [{"role": "user", "content": 3}]},
    ],
)
def test_from_history_rejects_bad_data(bad: object) -> None:
    with pytest.raises(ValueError):
        lms.Chat.from_history(bad)  # type: ignore[arg-type]


def test_images_and_tools_are_not_supported_yet() -> None:
    with pytest.raises(lms.NotSupportedError):
        lms.Chat.from_history({"messages": [{"role": "tool", "content": "x"}]})
    with pytest.raises(lms.NotSupportedError):
        lms.Chat().add_user_message([{"type": "file", "name": "a.png", "identifier": "x", "fileType": "image"}])


def test_consecutive_user_messages_merge_and_others_raise() -> None:
    chat = lms.Chat("sys")
    chat.add_user_message("one")
    chat.add_user_message("two")
    assert chat.to_messages()[-1] == {"role": "user", "content": "one\ntwo"}
    assert len(chat) == 2
    with pytest.raises(ValueError):
        lms.Chat("sys").add_system_prompt("again")
    chat2 = lms.Chat()
    chat2.add_assistant_response("a")
    with pytest.raises(ValueError):
        chat2.add_assistant_response("b")
    with pytest.raises(ValueError):
        lms.Chat().add_user_message([])


def test_append_accepts_messages_and_dicts() -> None:
    chat = lms.Chat()
    chat.append({"role": "user", "content": "hi"})
    chat.append(ChatMessage("assistant", "hello"))
    assert chat.to_messages() == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    with pytest.raises(ValueError):
        chat.append({"content": "no role"})


def test_copy_is_independent() -> None:
    chat = lms.Chat("sys")
    chat.add_user_message("hi")
    for other in (chat.copy(), copy.copy(chat), copy.deepcopy(chat)):
        assert other == chat
        other.add_assistant_response("hello")
        assert other != chat
        assert len(chat) == 2


def test_str_is_from_history_form() -> None:
    chat = lms.Chat("sys")
    text = str(chat)
    assert text.startswith("Chat.from_history(")
    assert '"role": "system"' in text


def test_to_messages_normalises_every_input() -> None:
    expected = [{"role": "user", "content": "Hi"}]
    assert to_messages("Hi") == expected
    assert to_messages(expected) == expected
    assert to_messages({"messages": expected}) == expected
    assert to_messages(lms.Chat.from_history("Hi")) == expected
