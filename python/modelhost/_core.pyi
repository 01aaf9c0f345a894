"""Type stubs for the Rust extension. Users import from `modelhost`, never from here.

Every method that loads, parses, infers or waits releases the GIL.
Every error is raised as one of the classes in `modelhost.errors`.
"""

from collections.abc import Callable, Sequence
from typing import Any, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "Generation",
    "Host",
    "Instance",
    "Server",
    "__version__",
    "mapped_file_count",
    "parse_gguf_header",
    "serve",
]

__version__: str

def mapped_file_count() -> int:
    """How many distinct model files are memory-mapped by this process right now."""

def parse_gguf_header(path: str) -> dict[str, Any]:
    """Parse and validate a GGUF file's header: {"version", "metadata" (arrays elided), "tensors"}."""

@final
class Host:
    """A catalog (models dir) and the limits its loads obey, viewing an instance table. One per `Client`.

    `isolated=False`: the process's shared table (instances, TTL thread, memory accounting shared by every such
    host); `isolated=True`: a private one. A load must leave the table's total estimated memory within this host's
    `memory_budget` and its instance count within `max_loaded` (docs/http-api.md, "One host per process")."""

    def __init__(
        self,
        models_dir: str,
        memory_budget: int | None = None,
        max_loaded: int | None = None,
        auto_evict: bool = True,
        isolated: bool = True,
    ) -> None: ...
    @property
    def models_dir(self) -> str: ...
    @property
    def isolated(self) -> bool: ...
    @property
    def client_id(self) -> str | None:
        """The id this host's own loads are recorded under (`Instance.info()["client_id"]`)."""
    def list_downloaded(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Catalog entries (from headers only): model_key, type, format, path, size_bytes, architecture,
        params_string, quantization, max_context_length, display_name."""
    def model(
        self,
        kind: str,
        key: str | None,
        ttl: float | None,
        config: dict[str, Any],
        on_progress: Callable[[float], object] | None,
        no_hup: bool = False,
        loaded_by: str | None = None,
    ) -> Instance:
        """Get-or-load (SPEC §4). `kind` is "llm" or "embedding"; `config` uses the snake_case flat keys
        of `Instance.load_config()`. Single flight: concurrent calls for one key load once. A load belongs to this
        host's client unless `loaded_by` is "cli" (or "server"); `close()` unloads its own loads except `no_hup`."""
    def load_new_instance(
        self,
        kind: str,
        key: str,
        identifier: str | None,
        ttl: float | None,
        config: dict[str, Any],
        on_progress: Callable[[float], object] | None,
        no_hup: bool = False,
        loaded_by: str | None = None,
    ) -> Instance: ...
    def list_loaded(self, kind: str | None = None) -> list[Instance]:
        """Every instance this host sees (the whole table; none once closed)."""
    def unload(self, kind: str | None, key_or_identifier: str) -> list[str]:
        """Unload by identifier, or every instance of a model key; the identifiers unloaded."""
    def estimate(self, kind: str, key: str, config: dict[str, Any]) -> dict[str, Any]:
        """{"weights_bytes", "kv_cache_bytes", "scratch_bytes", "total_bytes", "per_device": {device: bytes}}."""
    def close(self) -> None:
        """Isolated: unload everything and stop the TTL thread. Shared: unload the instances this host loaded
        itself, except those loaded with `no_hup` (or by the server or the CLI). Then calls fail with
        ClientClosedError. Idempotent; requests in flight finish first."""

@final
class Instance:
    """A handle on one loaded instance. It holds no memory: after unload every call raises
    ModelUnloadedError (except `unload`, a no-op, and the identity properties)."""

    @property
    def identifier(self) -> str: ...
    @property
    def model_key(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def instance_reference(self) -> str: ...
    def is_loaded(self) -> bool: ...
    def info(self) -> dict[str, Any]:
        """LM Studio's instance info plus ttl, last_used, expires_in, in_flight, status, loaded_by ("client",
        "server", "cli"), client_id, no_hup, device, placement, placement_warning, memory."""
    def load_config(self) -> dict[str, Any]:
        """The applied load config, flat snake_case keys: context_length, gpu_ratio, main_gpu, split_strategy,
        disabled_gpus, try_mmap, keep_model_in_memory, eval_batch_size, seed, rope_frequency_base,
        rope_frequency_scale (LLM); context_length, try_mmap, keep_model_in_memory, gpu_ratio, seed (embedding)."""
    def unload(self) -> None: ...
    def tokenize(self, text: str) -> list[int]: ...
    def detokenize(self, tokens: Sequence[int]) -> str: ...
    def context_length(self) -> int: ...
    # LLM only (other kinds raise ValueError):
    def apply_template(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str: ...
    def generate(
        self,
        prompt: str | Sequence[int],
        config: dict[str, Any],
        on_prompt_progress: Callable[[float], object] | None = None,
    ) -> Generation:
        """Start a prediction. `prompt` is raw text (tokenized with special tokens parsed) or token ids.
        `config` keys: max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, stop_strings, seed.
        `on_prompt_progress` is called while the prompt is processed (by the first `__next__` or `result`): 0.0, the
        share done after each evalBatchSize chunk, 1.0 last; an exception from it ends the prediction and propagates.
        The instance is busy (its FIFO queue holds) until the Generation ends, is cancelled or dropped."""
    def generate_chat(
        self,
        messages: Sequence[dict[str, str]],
        config: dict[str, Any],
        on_prompt_progress: Callable[[float], object] | None = None,
    ) -> Generation:
        """Start the assistant's reply to a chat: rendered with the model's template and tokenized as llama.cpp's
        chat does (a BOS the template writes is not doubled by the tokenizer's). `config` and `on_prompt_progress`
        as for `generate`."""
    def evaluate(self, tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        """Logits at every position, shape (len(tokens), vocab), from an empty cache."""
    # Embedding only:
    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Shape (len(texts), dim)."""

@final
class Generation:
    """A running prediction. Iterating yields fragments {"content": str, "tokens": list[int]}."""

    def __iter__(self) -> Generation: ...
    def __next__(self) -> dict[str, Any]: ...
    def cancel(self) -> None:
        """Stop after the current token; the stop reason becomes "userStopped"."""
    def result(self) -> dict[str, Any]:
        """Run to the end, then {"content", "tokens", "stats": {prompt_tokens_count, predicted_tokens_count,
        total_tokens_count, time_to_first_token_sec, tokens_per_second, stop_reason}}."""

def serve(
    host: Host,
    address: str = "127.0.0.1",
    port: int = 0,
    api_token: str | None = None,
    cors: bool = False,
    max_body_bytes: int | None = None,
    queue_limit: int | None = None,
    drain_timeout: float | None = None,
    default_ttl: float | None = 3600.0,
) -> Server:
    """Serve `host`'s instance table over HTTP (docs/http-api.md) on threads of its own; port 0 picks a free port.

    Keys resolve only inside the host's models dir. `api_token` None: `$LM_API_TOKEN`, else `$LMSTUDIO_API_TOKEN`,
    else none; "" switches authentication off. `default_ttl`: seconds a just-in-time load stays idle (None: never).
    Raises OSError when the address cannot be bound."""

@final
class Server:
    """A running HTTP server. Requests never take the GIL."""

    @property
    def url(self) -> str:
        """``http://<address>:<port>`` as bound."""
    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...
    def is_running(self) -> bool: ...
    def stop(self) -> None:
        """Stop accepting, let requests in flight finish (at most the drain timeout), then join. Idempotent."""
    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops; True once stopped, False after `timeout`. Ctrl-C while waiting drains and
        stops the server, then returns True."""
    def __enter__(self) -> Server: ...
    def __exit__(self, *args: object) -> None: ...
