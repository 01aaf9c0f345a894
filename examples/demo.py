"""`make demo`: load SmolLM2 with a progress bar, show its info, chat once, unload."""

from __future__ import annotations

import sys
import time

import modelhost as mh

KEY = "smollm2-135m-instruct"


def progress_bar(fraction: float) -> None:
    width = 40
    filled = int(fraction * width)
    sys.stdout.write(f"\rloading {KEY} [{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}%")
    if fraction >= 1.0:
        sys.stdout.write("\n")
    sys.stdout.flush()


def main() -> None:
    with mh.Client() as client:
        print("downloaded models:")
        for m in client.list_downloaded_models():
            print(f"  {m.model_key:55} {m.type:9} {m.format:11} {m.params_string:>5} {m.quantization}")
        start = time.perf_counter()
        llm = client.llm.model(KEY, config={"contextLength": 2048}, on_load_progress=progress_bar)
        print(f"loaded in {time.perf_counter() - start:.3f} s")
        info = llm.get_info()
        for field in ("identifier", "model_key", "architecture", "params_string", "context_length", "device"):
            print(f"  {field:20} {getattr(info, field)}")
        print("load config:", llm.get_load_config())

        chat = mh.Chat("You are a concise assistant.")
        chat.add_user_message("Name three primary colors.")
        print("\nuser: Name three primary colors.\nassistant: ", end="", flush=True)
        stream = llm.respond_stream(chat, config={"maxTokens": 64, "temperature": 0})
        for fragment in stream:
            print(fragment.content, end="", flush=True)
        result = stream.result()
        stats = result.stats
        print(
            f"\n[{stats.predicted_tokens_count} tokens, {stats.tokens_per_second:.1f} tok/s, "
            f"first token after {stats.time_to_first_token_sec * 1000:.0f} ms, stop: {stats.stop_reason}]"
        )
        llm.unload()
        print("unloaded; loaded now:", [m.identifier for m in client.llm.list_loaded()])


if __name__ == "__main__":
    main()
