"""Typed configs, instance info, estimates and errors (checked by mypy --strict)."""

from __future__ import annotations

import contextlib

import modelhost as mh
import numpy as np
import numpy.typing as npt


def load(client: mh.Client) -> mh.LLM:
    config = mh.LlmLoadModelConfig(
        context_length=2048, gpu=mh.GpuSetting(ratio="max"), try_mmap=True, eval_batch_size=256, seed=0
    )
    estimate: mh.MemoryEstimate = client.llm.estimate("smollm2-135m-instruct", config)
    print(estimate.total_bytes, estimate.per_device)
    try:
        return client.llm.model("smollm2-135m-instruct", ttl=None, config=config)
    except mh.InsufficientMemoryError as e:
        raise SystemExit(str(e)) from e
    except (mh.ModelNotFoundError, mh.ModelLoadError) as e:
        raise SystemExit(f"cannot load: {e}") from e


def main() -> None:
    with mh.Client(memory_budget=2 * 1024**3, max_loaded=4, auto_evict=True) as client:
        llm = load(client)
        applied: mh.LlmLoadModelConfig = llm.get_load_config()
        info: mh.LlmInstanceInfo = llm.get_info()
        print(applied.context_length, info.max_context_length, info.device, info.ttl)
        logits: npt.NDArray[np.float32] = llm.evaluate(llm.tokenize("The capital of France is"))
        print(int(np.argmax(logits[-1])))
        prediction = mh.LlmPredictionConfig(max_tokens=16, temperature=0.0, stop_strings=["."])
        print(llm.complete("The capital of France is", prediction).content)
        with contextlib.suppress(mh.InstanceExistsError):
            client.llm.load_new_instance("smollm2-135m-instruct", llm.identifier)
        emb_config = mh.EmbeddingLoadModelConfig(context_length=256)
        emb = client.embedding.load_new_instance("all-minilm-l6-v2", "emb", ttl=60, config=emb_config)
        emb_info: mh.EmbeddingModelInstanceInfo = emb.get_info()
        print(emb_info.architecture)
        llm.unload()
        with contextlib.suppress(mh.ModelUnloadedError):
            llm.respond("hello")
        for handle in client.list_loaded_models("embedding"):
            handle.unload()


if __name__ == "__main__":
    main()
