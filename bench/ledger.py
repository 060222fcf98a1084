"""Full-text history search on a large ledger: SQLite, and PostgreSQL when its server binaries are installed.

    .venv/bin/python bench/ledger.py [--rows 100000] [--queries 200]

Fills each ledger with ``--rows`` generations (prompts from a fixed vocabulary, so some words are in most rows and
some in few), then times ``history(Query(search=..., limit=20))`` for ``--queries`` searches of one to three words
taken from real prompts, the last often cut short (it is matched as a prefix). Target: SQLite p95 <= 30 ms.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.pg, when run as a script

from qolaba_mcp.ledger import LedgerRow, LedgerStore, Query, open_ledger, principal_of
from tests.pg import PostgresServer, PostgresUnavailable

SQLITE_P95_TARGET_MS = 30.0
BATCH = 5_000

# fmt: off
SUBJECTS = (
    "red fox", "lighthouse", "astronaut", "old fisherman", "paper crane", "robot gardener", "dragon", "tea house",
    "violinist", "tiger cub", "sailing ship", "desert caravan", "owl", "samurai", "jellyfish", "steam train",
    "bonsai tree", "wolf pack", "city skyline", "hot air balloon", "cat", "knight", "mermaid", "waterfall",
    "mountain village", "spaceship", "koi pond", "library", "bicycle", "cathedral", "lotus", "hummingbird",
)
PLACES = (
    "in a misty forest", "on a rainy street", "under the northern lights", "at the edge of a cliff",
    "in a neon city", "on the moon", "inside a glass dome", "beside a frozen lake", "in a sunflower field",
    "on a crowded market", "in an abandoned factory", "among cherry blossoms", "in deep space", "on a quiet beach",
    "in a snowy valley",
)
STYLES = (
    "watercolor", "oil painting", "photorealistic", "pixel art", "ukiyo-e woodblock print", "charcoal sketch",
    "isometric 3d render", "art nouveau poster", "cinematic still", "low poly", "studio ghibli style", "vaporwave",
    "pencil drawing", "stained glass", "claymation", "double exposure photograph", "baroque",
    "minimalist vector illustration", "infrared photo", "tilt-shift",
)
LIGHT = (
    "golden hour", "at dawn", "at midnight", "soft morning light", "dramatic rim lighting", "overcast", "candlelit",
    "harsh noon sun", "bioluminescent glow", "blue hour",
)
EXTRAS = (
    "highly detailed", "8k", "wide angle", "macro", "bokeh", "muted palette", "vivid colors", "film grain",
    "symmetrical", "long exposure", "volumetric fog", "trending on artstation", "sharp focus", "dreamy", "moody",
)
# fmt: on
MODELS = ("flux-pro", "flux-dev", "sdxl", "sd3-large", "ideogram-v2", "dall-e-3", "imagen-3", "recraft-v3")
STATES = ("succeeded",) * 8 + ("failed", "unknown")


def prompt(rng: random.Random) -> str:
    words = [f"a {rng.choice(SUBJECTS)} {rng.choice(PLACES)}", rng.choice(STYLES), rng.choice(LIGHT)]
    words += rng.sample(EXTRAS, rng.randint(0, 3))
    return ", ".join(words)


def rows(count: int, rng: random.Random) -> list[LedgerRow]:
    principals = [principal_of(f"qk_bench_{i}") for i in range(50)]
    start = time.time() - 90 * 86400
    made = []
    for i in range(count):
        at = start + i * (90 * 86400 / count) + rng.random()
        text = prompt(rng)
        request: dict[str, Any] = {"model": rng.choice(MODELS), "prompt": text, "seed": i}
        made.append(
            LedgerRow(
                id=f"{i:08x}{rng.getrandbits(64):016x}",
                principal=rng.choice(principals),
                api_base="https://api.qolaba.ai/api/v1",
                request_hash=f"{rng.getrandbits(128):032x}",
                request=request,
                model=request["model"],
                prompt=text,
                state=rng.choice(STATES),
                task_id=f"task-{i}",
                created_at=at,
                updated_at=at + 20,
                finished_at=at + 20,
                cost_usd=0.04,
            )
        )
    return made


def searches(count: int, rng: random.Random) -> list[str]:
    """Words as a person would type them: from real prompts, in order, the last one sometimes unfinished."""
    found = []
    for _ in range(count):
        words = [w.strip(",") for w in prompt(rng).split() if len(w.strip(",")) > 1]
        first = rng.randrange(len(words))
        chosen = words[first : first + rng.randint(1, 3)]
        if rng.random() < 0.4 and len(chosen[-1]) > 3:
            chosen[-1] = chosen[-1][: rng.randint(3, len(chosen[-1]) - 1)]
        found.append(" ".join(chosen))
    return found


async def measure(url: str, data: list[LedgerRow], texts: list[str]) -> tuple[float, float, float, float]:
    """Seconds to fill; p50 and p95 ms of a search; the mean number of rows a page held."""
    store: LedgerStore = open_ledger(url)
    await store.open()
    try:
        started = time.perf_counter()
        for i in range(0, len(data), BATCH):
            await store._insert_rows(data[i : i + BATCH])  # type: ignore[attr-defined]  # both backends have it
        filled = time.perf_counter() - started
        for text in texts[:10]:  # warm caches, as a running server's would be
            await store.history(Query(search=text, limit=20))
        times, sizes = [], []
        for text in texts:
            started = time.perf_counter()
            page, _ = await store.history(Query(search=text, limit=20))
            times.append((time.perf_counter() - started) * 1000)
            sizes.append(len(page))
    finally:
        await store.close()
    cuts = statistics.quantiles(times, n=100)
    return filled, statistics.median(times), cuts[94], statistics.mean(sizes)


def report(name: str, rows: int, result: tuple[float, float, float, float], target: float | None) -> None:
    filled, p50, p95, size = result
    verdict = "" if target is None else f", target p95 <= {target:.0f} ms: {'met' if p95 <= target else 'MISSED'}"
    print(
        f"{name}: {rows:,} rows filled in {filled:.1f} s; search p50 {p50:.2f} ms, p95 {p95:.2f} ms"
        f" (mean page {size:.1f} rows){verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    data, texts = rows(args.rows, rng), searches(args.queries, rng)
    with tempfile.TemporaryDirectory() as folder:
        result = anyio.run(measure, f"sqlite:///{folder}/ledger.db", data, texts)
    report("sqlite", args.rows, result, SQLITE_P95_TARGET_MS)
    try:
        server = PostgresServer.start()
    except PostgresUnavailable as exc:
        print(f"postgresql: skipped ({exc})")
        return
    with server:
        report("postgresql", args.rows, anyio.run(measure, server.create_database(), data, texts), None)


if __name__ == "__main__":
    main()
