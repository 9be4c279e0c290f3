"""The Python peer of scripts/bench-engine, measured in the same run on the same machine.

The popular Python pipeline tools send their model calls through the official `openai` client
(AsyncOpenAI on httpx). This measures that client alone: small chat completions against the
simulator at zero latency, with no DAG, no images and no checkpoints, at a few concurrency
levels; the best rate is an upper bound for any tool built on it, and what the engine's figure
is divided by.

    python3 scripts/bench-engine-peer.py BASE_URL [CALLS]
"""

import asyncio
import sys
import time

import openai
from openai import AsyncOpenAI

CONCURRENCY = (16, 64, 256)


async def rate(client: AsyncOpenAI, calls: int, concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            reply = await client.chat.completions.create(
                model="Qwen/Qwen3-32B",
                messages=[{"role": "user", "content": "Say hello."}],
                max_tokens=16,
            )
            assert reply.choices, "a reply without choices"

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    return calls / (time.perf_counter() - start)


async def main(url: str, calls: int) -> None:
    client = AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
    await rate(client, 200, 16)  # warm up: connections, imports
    rates = {c: await rate(client, calls, c) for c in CONCURRENCY}
    detail = ", ".join(f"{c} in flight {r:.0f}/s" for c, r in rates.items())
    print(f"peer: openai {openai.__version__} AsyncOpenAI, {calls} small chat calls each: {detail}")
    print(f"peer_best {max(rates.values()):.0f}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3000))
