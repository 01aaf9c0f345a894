"""Scale-out simulation: 100 replicas x 50 models under a Zipf request stream, Ray Serve's multiplexed routing with
modelhost's budget vs random routing. Pure Python, seeded, discrete-event (docs/scale-out.md states the model).

Usage: python benches/ray_sim.py [--figures benches/results/ray-figures.json] [--seed 0]
       [--out benches/results/ray-sim.md]

Fed with figures measured on this machine (benches/ray_figures.py): load time, time to first token and decode rate
of GGUF files of several sizes, fitted linearly in the file size, so a model of any size in the range gets a load
time, a first-token time and a per-token time.

Assumptions (stated in the output too):
- A replica serves one request at a time, first come first served (its threads all work on one request); a load
  runs in the same line, before the request that needed it.
- A model's memory is 1.5x its file (weights plus a 1024-token KV cache and scratch: SmolLM2 Q4_1 is 98 MB on disk
  and 154 MB by ``estimate()``, its Q8_0 145 MB and 202 MB). Every replica has the same budget;
  ``models_per_replica`` = budget // largest model (modelhost.ray's rule); eviction is LRU.
- Requests arrive as a Poisson stream; each names a model drawn from a Zipf law (exponent 1.1) over the 50 models,
  and asks for 64 generated tokens. The rate is set so that with every request a hit the replicas are 60 % busy.
- Serve (pow-2 with multiplexing): among replicas that hold or are loading the model, the shorter of two random
  ones if it has fewer than ``max_ongoing_requests`` (16 and 4 are compared); else, or when none holds it, the
  shorter of two random replicas among those with the fewest models; the model-id push to the router is taken as
  instantaneous (Serve's is every 0.1 s). Random: a uniformly random replica.
- Latency = completion - arrival (queueing, any load, first token, decode). The first simulated minute is warm-up
  and not counted.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPLICAS = 100
MODELS = 50
ZIPF_EXPONENT = 1.1
TOKENS = 64
BUSY_TARGET = 0.6
MEMORY_PER_FILE_BYTE = 1.5
MAX_ONGOING_CHOICES = (16, 4)
SIM_SECONDS = 660.0
WARMUP_SECONDS = 60.0


@dataclass
class Costs:
    """Seconds as linear functions of the file size in bytes, fitted to the measured figures."""

    load: tuple[float, float]
    first_token: tuple[float, float]
    per_token: tuple[float, float]

    @staticmethod
    def fit(rows: list[dict[str, Any]]) -> Costs:
        sizes = [float(r["size_bytes"]) for r in rows]

        def line(ys: list[float]) -> tuple[float, float]:
            mx, my = statistics.fmean(sizes), statistics.fmean(ys)
            var = sum((x - mx) ** 2 for x in sizes)
            slope = sum((x - mx) * (y - my) for x, y in zip(sizes, ys)) / var if var else 0.0
            slope = max(slope, 0.0)
            return max(my - slope * mx, 0.0), slope

        return Costs(
            load=line([r["load_s"]["median"] for r in rows]),
            first_token=line([r["first_token_s"]["median"] for r in rows]),
            per_token=line([1.0 / r["decode_tok_per_s"]["median"] for r in rows]),
        )

    @staticmethod
    def at(coefficients: tuple[float, float], size: float) -> float:
        return coefficients[0] + coefficients[1] * size

    def service(self, size: float) -> float:
        return self.at(self.first_token, size) + (TOKENS - 1) * self.at(self.per_token, size)


@dataclass
class Replica:
    capacity: int
    free_at: float = 0.0
    ends: list[float] = field(default_factory=list)  # completion times of its requests, ascending
    models: collections.OrderedDict[int, None] = field(default_factory=collections.OrderedDict)

    def ongoing(self, now: float) -> int:
        drop = bisect.bisect_right(self.ends, now)
        if drop:
            del self.ends[:drop]
        return len(self.ends)


def _pick_shorter(rng: random.Random, replicas: list[Replica], ids: list[int], now: float) -> int:
    if len(ids) == 1:
        return ids[0]
    a, b = rng.sample(ids, 2)
    return a if replicas[a].ongoing(now) <= replicas[b].ongoing(now) else b


def _route_serve(rng: random.Random, replicas: list[Replica], holders: list[int], now: float, max_ongoing: int) -> int:
    if holders:
        chosen = _pick_shorter(rng, replicas, holders, now)
        if replicas[chosen].ongoing(now) < max_ongoing:
            return chosen
    fewest = min(len(r.models) for r in replicas)
    candidates = [i for i, r in enumerate(replicas) if len(r.models) == fewest]
    chosen = _pick_shorter(rng, replicas, candidates, now)
    if replicas[chosen].ongoing(now) < max_ongoing:
        return chosen
    return min(range(len(replicas)), key=lambda i: replicas[i].ongoing(now))  # all full: Serve waits; we queue


def simulate(
    policy: str, costs: Costs, sizes: list[float], budget: float, rate: float, seed: int, max_ongoing: int = 0
) -> dict[str, Any]:
    rng = random.Random(seed)
    memory = [s * MEMORY_PER_FILE_BYTE for s in sizes]
    capacity = max(1, int(budget // max(memory)))
    replicas = [Replica(capacity) for _ in range(REPLICAS)]
    holders: dict[int, set[int]] = collections.defaultdict(set)
    weights = [1.0 / (rank + 1) ** ZIPF_EXPONENT for rank in range(MODELS)]
    now, hits, counted, loads = 0.0, 0, 0, 0
    latencies: list[float] = []
    while now < SIM_SECONDS:
        now += rng.expovariate(rate)
        model = rng.choices(range(MODELS), weights)[0]
        if policy == "serve":
            index = _route_serve(rng, replicas, sorted(holders[model]), now, max_ongoing)
        else:
            index = rng.randrange(REPLICAS)
        replica = replicas[index]
        start = max(now, replica.free_at)
        work = costs.service(sizes[model])
        hit = model in replica.models
        if hit:
            replica.models.move_to_end(model)
        else:
            if len(replica.models) >= replica.capacity:
                evicted, _ = replica.models.popitem(last=False)
                holders[evicted].discard(index)
            replica.models[model] = None
            holders[model].add(index)
            work += costs.at(costs.load, sizes[model])
        end = start + work
        replica.free_at = end
        replica.ongoing(now)
        replica.ends.append(end)  # FIFO: each end is later than the replica's earlier ones
        if now >= WARMUP_SECONDS:
            counted += 1
            hits += hit
            loads += not hit
            latencies.append(end - now)
    latencies.sort()
    minutes = (SIM_SECONDS - WARMUP_SECONDS) / 60
    return {
        "policy": policy,
        "models_per_replica": capacity,
        "requests": counted,
        "hit_rate": hits / counted,
        "loads_per_minute": loads / minutes,
        "p50_s": latencies[len(latencies) // 2],
        "p99_s": latencies[int(len(latencies) * 0.99)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figures", default=str(Path(__file__).parent / "results" / "ray-figures.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ray-sim.md"))
    args = parser.parse_args()
    figures = json.loads(Path(args.figures).read_text(encoding="utf-8"))
    costs = Costs.fit(figures["models"])
    measured = [float(r["size_bytes"]) for r in figures["models"]]
    rng = random.Random(args.seed)
    low, high = min(measured), max(measured)
    sizes = [low * (high / low) ** rng.random() for _ in range(MODELS)]  # log-uniform over the measured range
    weights = [1.0 / (rank + 1) ** ZIPF_EXPONENT for rank in range(MODELS)]
    mean_service = sum(w * costs.service(s) for w, s in zip(weights, sizes)) / sum(weights)
    rate = BUSY_TARGET * REPLICAS / mean_service
    lines = [
        f"Simulation: {REPLICAS} replicas x {MODELS} models, Zipf {ZIPF_EXPONENT}, Poisson arrivals at "
        f"{rate:.0f} requests/s ({BUSY_TARGET:.0%} busy if every request hit), {TOKENS} tokens each, "
        f"{SIM_SECONDS - WARMUP_SECONDS:.0f} s measured after {WARMUP_SECONDS:.0f} s warm-up, seed {args.seed}.",
        f"Model files {low / 1e6:.0f}-{high / 1e6:.0f} MB (log-uniform); costs fitted to {figures['date']}'s "
        f"measurements ({figures['cpu_model']}, {figures['threads']} thread(s) per replica): load "
        f"{costs.load[0]:.3f} s + {costs.load[1] * 1e9:.3f} s/GB, first token {costs.first_token[0]:.3f} s + "
        f"{costs.first_token[1] * 1e9:.3f} s/GB, per token {costs.per_token[0] * 1e3:.2f} ms + "
        f"{costs.per_token[1] * 1e12:.2f} ms/GB.",
        "",
        "| budget per replica | models per replica | routing | hit rate | loads / min | p50 latency | p99 latency |",
        "|---|---|---|---|---|---|---|",
    ]
    largest = max(sizes) * MEMORY_PER_FILE_BYTE
    for slots in (2, 4, 8):
        budget = slots * largest
        runs = [("random", 0), *(("serve", m) for m in MAX_ONGOING_CHOICES)]
        for policy, max_ongoing in runs:
            r = simulate(policy, costs, sizes, budget, rate, args.seed, max_ongoing)
            routing = f"Serve multiplexed, max_ongoing_requests {max_ongoing}" if policy == "serve" else "random"
            lines.append(
                f"| {budget / 1e9:.2f} GB | {r['models_per_replica']} | {routing} | {r['hit_rate']:.1%} | "
                f"{r['loads_per_minute']:.0f} | {r['p50_s']:.2f} s | {r['p99_s']:.2f} s |"
            )
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
