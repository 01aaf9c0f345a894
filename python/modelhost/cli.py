"""``python -m modelhost``: list models, chat with an LLM, embed text."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .client import Client
from .errors import ModelHostError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m modelhost", description=__doc__)
    parser.add_argument("--models-dir", help="models directory (default: $MODELHOST_MODELS_DIR or ~/.cache/...)")
    commands = parser.add_subparsers(dest="command", required=True)
    ls = commands.add_parser("ls", help="list downloaded models")
    ls.add_argument("kind", nargs="?", choices=("llm", "embedding"), help="only this kind")
    ls.add_argument("--json", action="store_true", help="print JSON lines")
    for name, help_text in (("chat", "stream an LLM's reply to one prompt"), ("load", "alias of chat")):
        chat = commands.add_parser(name, help=help_text)
        chat.add_argument("key", help="model key or alias")
        chat.add_argument("prompt", nargs="?", help="the user message (default: show the model's info)")
        chat.add_argument("--system", help="system prompt")
        chat.add_argument("--max-tokens", type=int, default=256)
        chat.add_argument("--temperature", type=float, default=0.0)
        chat.add_argument("--context-length", type=int)
    embed = commands.add_parser("embed", help="print embedding vectors (JSON, one line per text)")
    embed.add_argument("key", help="model key or alias")
    embed.add_argument("texts", nargs="+", help="texts to embed")
    return parser


def _ls(client: Client, kind: str | None, as_json: bool) -> None:
    models = client.list_downloaded_models(kind)
    if as_json:
        for m in models:
            print(json.dumps({k: v for k, v in vars(m).items() if not k.startswith("_")}))
        return
    rows = [("KEY", "TYPE", "FORMAT", "ARCH", "PARAMS", "QUANT", "SIZE")]
    for m in models:
        size = f"{m.size_bytes / 1e6:.0f} MB"
        rows.append(
            (m.model_key, m.type, m.format, m.architecture or "", m.params_string or "", m.quantization or "", size)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _chat(client: Client, args: argparse.Namespace) -> None:
    from .chat import Chat

    config = {"contextLength": args.context_length} if args.context_length else None
    model = client.llm.model(args.key, config=config)
    if args.prompt is None:
        print(model.get_info())
        return
    chat = Chat(args.system)
    chat.add_user_message(args.prompt)
    stream = model.respond_stream(chat, {"maxTokens": args.max_tokens, "temperature": args.temperature})
    for fragment in stream:
        print(fragment.content, end="", flush=True)
    print()
    stats = stream.result().stats
    print(
        f"[{stats.predicted_tokens_count} tokens, {stats.tokens_per_second or 0:.1f} tok/s, {stats.stop_reason}]",
        file=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        with Client(args.models_dir) as client:
            if args.command == "ls":
                _ls(client, args.kind, args.json)
            elif args.command in ("chat", "load"):
                _chat(client, args)
            else:
                vectors = client.embedding.model(args.key).embed(args.texts)
                for vector in vectors:
                    print(json.dumps([round(float(x), 6) for x in vector]))
    except ModelHostError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
