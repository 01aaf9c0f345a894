"""The README's quick start: load, chat, stream, embed (checked by mypy --strict)."""

from __future__ import annotations

import modelhost as mh
import numpy as np
import numpy.typing as npt


def main() -> None:
    with mh.Client() as client:
        llm: mh.LLM = client.llm.model(
            "smollm2-135m-instruct", ttl=600, config={"contextLength": 4096}, on_load_progress=print
        )
        two = client.llm.load_new_instance("smollm2-135m-instruct", "second")
        loaded: list[mh.LLM] = client.llm.list_loaded()
        client.llm.unload("second")
        assert not two.is_loaded() and loaded

        result: mh.PredictionResult = llm.respond("What is the meaning of life?", {"maxTokens": 32})
        print(result)
        stats: mh.LlmPredictionStats = result.stats
        print(stats.predicted_tokens_count, stats.tokens_per_second, stats.stop_reason)

        stream: mh.PredictionStream = llm.respond_stream("Tell me a joke.", config={"temperature": 0.7})
        for fragment in stream:
            print(fragment.content, end="", flush=True)
        print(stream.result().content)

        emb: mh.EmbeddingModel = client.embedding.model("all-minilm-l6-v2")
        vecs: npt.NDArray[np.float32] = emb.embed(["a", "b"])
        one: npt.NDArray[np.float32] = emb.embed("c")
        print(vecs.shape, one.shape)
        llm.unload()


if __name__ == "__main__":
    main()
