"""The ``Chat`` helper: a conversation to send to ``llm.respond()``, as in LM Studio's SDK."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from .errors import NotSupportedError

__all__ = ["AnyChatInput", "Chat", "ChatMessage", "ChatMessageDict"]

ChatMessageDict = dict[str, str]
"""A message as a plain dict: ``{"role": "user", "content": "Hi"}``."""

_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat.

    Attributes:
        role: "system", "user" or "assistant".
        content: The message's text.
    """

    role: str
    content: str

    def to_dict(self) -> ChatMessageDict:
        """The message as ``{"role", "content"}``."""
        return {"role": self.role, "content": self.content}


def _text_of(part: object, role: str) -> str:
    """The text of one content part: a str, ``{"text": ...}`` or ``{"type": "text", "text": ...}``."""
    if isinstance(part, str):
        return part
    if isinstance(part, ChatMessage):
        return part.content
    if isinstance(part, Mapping):
        kind = part.get("type", "text")
        text = part.get("text")
        if kind == "text" and isinstance(text, str):
            return text
        if kind in ("file", "toolCallRequest", "toolCallResult") or "fileType" in part or "identifier" in part:
            raise NotSupportedError(f"{role} message content of type {kind!r} is not supported yet (text only)")
    content = getattr(part, "content", None)  # e.g. a PredictionResult given as an assistant response
    if isinstance(content, str):
        return content
    raise ValueError(f"unable to parse {role} message content: {part!r}")


def _texts_of(content: object, role: str) -> list[str]:
    """The text parts of a message's content: one part, or an iterable of parts (multi-part content)."""
    if isinstance(content, (str, Mapping, ChatMessage)) or not isinstance(content, Iterable):
        return [_text_of(content, role)]
    return [_text_of(part, role) for part in content]


class Chat:
    """A conversation: a system prompt and alternating user and assistant messages.

    As in LM Studio's SDK, consecutive user messages merge into one (multi-part) message, and consecutive system
    prompts or assistant responses are an error.

    Example:
        >>> chat = Chat("You are a resident AI philosopher.")
        >>> chat.add_user_message("What is the meaning of life?")
        ChatMessage(role='user', content='What is the meaning of life?')
    """

    def __init__(self, system_prompt: str | None = None) -> None:
        """Start a chat, optionally with a system prompt.

        Args:
            system_prompt: The first message, with role "system".
        """
        self._messages: list[ChatMessage] = []
        if system_prompt is not None:
            self.add_system_prompt(system_prompt)

    @classmethod
    def from_history(cls, history: Chat | Mapping[str, Any] | Sequence[Mapping[str, Any]] | str) -> Chat:
        """Build a chat from history data.

        Args:
            history: A str (one user message), a ``{"messages": [{"role", "content"}, ...]}`` dict as LM Studio's
                chat history data, a list of such messages, or a ``Chat`` (copied). Content may be a str, a
                ``{"type": "text", "text": ...}`` part or a list of such parts.

        Returns:
            A new chat.

        Raises:
            ValueError: On an unknown role or content that cannot be parsed.
        """
        chat = cls()
        if isinstance(history, Chat):
            chat._messages = list(history._messages)
        elif isinstance(history, str):
            chat.add_user_message(history)
        elif isinstance(history, Mapping):
            messages = history.get("messages")
            if messages is None or isinstance(messages, (str, Mapping)) or not isinstance(messages, Iterable):
                raise ValueError("expected a Chat, a str, or a dict with a 'messages' list")
            chat._add_entries(messages)
        elif isinstance(history, Iterable):
            chat._add_entries(history)
        else:
            raise TypeError(f"cannot build a Chat from {type(history).__name__}")
        return chat

    def _add_entries(self, entries: Iterable[Any]) -> None:
        for entry in entries:
            if isinstance(entry, ChatMessage):
                self.add_entry(entry.role, entry.content)
            elif isinstance(entry, Mapping) and "role" in entry and "content" in entry:
                self.add_entry(entry["role"], entry["content"])
            else:
                raise ValueError(f"could not parse history entry: {entry!r}")

    def copy(self) -> Chat:
        """An independent copy of the chat."""
        return type(self).from_history(self)

    __copy__ = copy

    def __deepcopy__(self, memo: object) -> Chat:
        """Messages are immutable, so a copy is already deep."""
        return self.copy()

    def add_entry(self, role: str, content: Any) -> ChatMessage:
        """Add a message with the given role ("system", "user" or "assistant").

        Raises:
            ValueError: On an unknown role.
        """
        if role == "user":
            return self.add_user_message(content)
        if role == "assistant":
            return self.add_assistant_response(content)
        if role == "system":
            return self.add_system_prompt(content)
        if role == "tool":
            raise NotSupportedError("tool messages are not supported yet")
        raise ValueError(f"unknown chat role {role!r}: expected one of {', '.join(_ROLES)}")

    def append(self, message: ChatMessage | Mapping[str, Any]) -> ChatMessage:
        """Append a message given as a ``ChatMessage`` or a ``{"role", "content"}`` dict.

        This is the ``on_message`` callback of ``respond()``: ``llm.respond(chat, on_message=chat.append)``.
        """
        if isinstance(message, ChatMessage):
            return self.add_entry(message.role, message.content)
        if isinstance(message, Mapping) and "role" in message and "content" in message:
            return self.add_entry(message["role"], message["content"])
        raise ValueError(f"{message!r} is not a valid chat entry")

    def _raise_if_consecutive(self, role: str, what: str) -> None:
        if self._messages and self._messages[-1].role == role:
            raise ValueError(f"consecutive {what} are not supported")

    def add_system_prompt(self, prompt: str | Mapping[str, Any]) -> ChatMessage:
        """Add a system prompt.

        Raises:
            ValueError: If the last message is a system prompt too.
        """
        self._raise_if_consecutive("system", "system prompts")
        message = ChatMessage("system", "\n".join(_texts_of(prompt, "system")))
        self._messages.append(message)
        return message

    def add_user_message(self, content: str | Mapping[str, Any] | Iterable[Any]) -> ChatMessage:
        """Add a user message; right after another user message it merges into that one.

        Raises:
            ValueError: If the message is empty or cannot be parsed.
        """
        texts = _texts_of(content, "user")
        if not texts:
            raise ValueError("empty user messages are not supported")
        if self._messages and self._messages[-1].role == "user":
            texts = [self._messages.pop().content, *texts]
        message = ChatMessage("user", "\n".join(texts))
        self._messages.append(message)
        return message

    def add_assistant_response(self, response: Any) -> ChatMessage:
        """Add an assistant response: a str, a text part, or a ``PredictionResult``.

        Raises:
            ValueError: If the last message is an assistant response too.
        """
        self._raise_if_consecutive("assistant", "assistant responses")
        message = ChatMessage("assistant", "\n".join(_texts_of(response, "assistant")))
        self._messages.append(message)
        return message

    @property
    def messages(self) -> list[ChatMessage]:
        """A copy of the messages, in order."""
        return list(self._messages)

    def to_messages(self) -> list[ChatMessageDict]:
        """The chat as ``[{"role", "content"}, ...]``, the form chat templates take."""
        return [m.to_dict() for m in self._messages]

    def __len__(self) -> int:
        """Number of messages."""
        return len(self._messages)

    def __eq__(self, other: object) -> bool:
        """Chats are equal when their messages are."""
        if not isinstance(other, Chat):
            return NotImplemented
        return self._messages == other._messages

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        """``Chat.from_history({...})``, as LM Studio prints a chat."""
        data = json.dumps({"messages": self.to_messages()}, indent=2, ensure_ascii=False)
        return f"{type(self).__name__}.from_history({data})"

    def __repr__(self) -> str:
        """Same as ``str()``."""
        return str(self)


AnyChatInput = Union[Chat, Mapping[str, Any], Sequence[Mapping[str, Any]], str]
"""What ``respond()`` accepts as a chat: a ``Chat``, history data, a list of messages, or one user message."""


def to_messages(history: AnyChatInput) -> list[ChatMessageDict]:
    """Normalise any chat input to ``[{"role", "content"}, ...]``."""
    if isinstance(history, Chat):
        return history.to_messages()
    return Chat.from_history(history).to_messages()
