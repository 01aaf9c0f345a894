"""AsyncClient and the remote Client, typed (checked by mypy --strict)."""

from __future__ import annotations

import asyncio

import modelhost as lms
import numpy as np
import numpy.typing as npt


async def chat(client: lms.AsyncClient) -> lms.PredictionResult:
    model: lms.AsyncLLM = await client.llm.model("smollm2-135m-instruct", ttl=600, on_load_progress=print)
    info: lms.LlmInstanceInfo = await model.get_info()
    config: lms.LlmLoadModelConfig = await model.get_load_config()
    print(info.loaded_by, info.expires_in, config.context_length, await model.get_context_length())
    tokens: list[int] = await model.tokenize("Hello")
    print(tokens, await model.count_tokens("Hello"), await model.apply_prompt_template("Hi"))
    async for fragment in model.respond_stream("What is the meaning of life?", {"maxTokens": 8}):
        print(fragment.content, end="")
    stream: lms.AsyncPredictionStream = await model.complete_stream("My name is", {"maxTokens": 8})
    async for fragment in stream:
        if fragment.tokens:
            await stream.cancel()
    print(stream.result().stats.stop_reason)
    logits: npt.NDArray[np.float32] = await model.evaluate([1, 2, 3])
    print(logits.shape)
    return await model.respond("Hi", on_prompt_processing_progress=lambda p: print(p))


async def embed(client: lms.AsyncClient) -> npt.NDArray[np.float32]:
    model: lms.AsyncEmbeddingModel = await client.embedding.model("all-minilm-l6-v2", no_hup=True)
    downloaded: list[lms.AsyncDownloadedModel] = await client.embedding.list_downloaded()
    handle: lms.AnyAsyncModelHandle = await downloaded[0].model()
    print(handle.identifier, await client.list_loaded_models("embedding"))
    return await model.embed(["a", "b"])


async def main() -> None:
    async with lms.AsyncClient() as client:
        print(await chat(client))
    if await lms.AsyncClient.is_valid_api_host("127.0.0.1:41234"):
        async with lms.AsyncClient("127.0.0.1:41234", api_token=None) as remote:
            print((await embed(remote)).shape)


def remote() -> None:
    host = lms.Client.find_default_local_api_host()
    if host is None:
        return
    lms.configure_default_client(host)
    try:
        with lms.Client(api_host=host) as client:
            llm: lms.LLM = client.llm.model()
            print(llm.respond("Hi").content, client.api_host)
    except lms.ServerConnectionError as e:
        print(e)
    except (lms.AuthenticationError, lms.ServerBusyError) as e:
        print(e)
    with lms.Client(isolated=True, memory_budget=2**30) as private, private.serve(port=0) as server:
        print(server.url)


if __name__ == "__main__":
    asyncio.run(main())
    remote()
