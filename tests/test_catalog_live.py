"""The live model list: the sandbox's endpoint, the merge over the catalogue, caching, fallback, prices, checks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx2
import pytest

from qolaba_mcp.api._catalog import BUILTIN_MODELS, CREDIT_USD, Catalog, ModelInfo
from qolaba_mcp.api._client import QolabaClient
from qolaba_mcp.api._live import LiveCatalog, check_request, estimate_usd, merge_live
from qolaba_mcp.api._wire import GenerateRequest, ReferenceImage
from qolaba_mcp.sandbox import SandboxServer

pytestmark = pytest.mark.anyio
KEY = "qk_live_catalog_test_key"

# A model only this module adds to the sandbox, with limits the request model itself would not catch.
STRICT = ModelInfo(
    id="test/strict",
    name="Strict",
    capabilities=["text-to-image", "multi-reference"],
    max_images=2,
    aspect_ratios=["1:1", "16:9"],
    qualities=["1K", "2K"],
    long_side={"1K": 1024, "2K": 2048},
    parameters=["prompt", "reference_images", "aspect_ratio", "quality", "num_images", "temperature"],
    max_reference_images=2,
    min_temperature=0.5,
    max_temperature=1.0,
    credits_per_image=10,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def live_sandbox(sandbox: SandboxServer) -> Iterator[SandboxServer]:
    """The session's sandbox serving the built-in catalogue plus STRICT; restored afterwards."""
    state = sandbox.sandbox.state
    original = state.catalog
    state.catalog = Catalog([*BUILTIN_MODELS, STRICT])
    yield sandbox
    state.catalog = original


@pytest.fixture
async def client(live_sandbox: SandboxServer) -> AsyncIterator[QolabaClient]:
    async with QolabaClient(base_url=live_sandbox.base_url, api_key=KEY) as client:
        yield client


def live(client: QolabaClient, clock: Clock | None = None) -> LiveCatalog:
    return LiveCatalog(fallback=Catalog.builtin(), fetch=client.list_models, clock=clock or Clock())


def model_lists(server: SandboxServer) -> int:
    return int(server.stats()["model_lists"])


# --- the endpoint -----------------------------------------------------------------------------------------


def test_endpoint_lists_every_model_in_the_documented_shape(live_sandbox: SandboxServer) -> None:
    url = f"{live_sandbox.base_url}/api/v1/images/models"
    assert httpx2.get(url).status_code == 401  # a key is required, as on every API endpoint
    body = httpx2.get(url, headers={"X-API-Key": KEY}).json()
    assert list(body) == ["models"]
    entries = {entry["id"]: entry for entry in body["models"]}
    assert list(entries) == [*(m.id for m in BUILTIN_MODELS), "test/strict"]
    required = {"id", "name", "provider", "providerName", "description", "capabilities", "imageSize"}
    required |= {"quality_pricing", "outputFormat", "maxNumImages", "defaultNumImages", "supportsSeed"}
    for model in [*BUILTIN_MODELS, STRICT]:
        entry = entries[model.id]
        assert required <= set(entry), model.id
        assert entry["maxNumImages"] == model.max_images and entry["imageSize"] == model.aspect_ratios
        assert all("_" in c or "-" not in c for c in entry["capabilities"])  # text_to_image, not text-to-image
        assert entry["supportsSeed"] == ("seed" in model.parameters)
        assert set(entry["quality_pricing"]) == set(model.qualities)
        if "quality" in model.parameters:
            assert entry["quality"] == model.qualities
        else:
            assert "quality" not in entry
    pro = entries["vertex/nano-banana-pro"]["quality_pricing"]
    assert pro == {"1K": 24 * CREDIT_USD, "2K": 24 * CREDIT_USD * 2, "4K": 24 * CREDIT_USD * 4}
    strict = entries["test/strict"]
    assert (strict["minTemperature"], strict["maxTemperature"], strict["maxReferenceImages"]) == (0.5, 1.0, 2)


@pytest.mark.parametrize(
    ("model", "quality", "num_images"),
    [
        ("vertex/nano-banana-pro", None, 1),
        ("vertex/nano-banana-pro", "2K", 2),
        ("vertex/nano-banana-pro", "4K", 3),
        ("vertex/imagen-4", "2K", 1),
        ("openai/gpt-image-2", "high", 2),
    ],
)
async def test_listed_prices_match_what_a_generation_is_charged(
    client: QolabaClient, live_sandbox: SandboxServer, model: str, quality: str | None, num_images: int
) -> None:
    live_sandbox.configure(latency=0)
    info = (await live(client).get()).get(model)
    assert info is not None and info.price_source == "live"
    request = GenerateRequest(model=model, prompt="p", quality=quality, num_images=num_images)
    result = await client.generate(request)
    assert result.usage is not None  # type: ignore[union-attr]
    assert estimate_usd(info, quality, num_images) == pytest.approx(result.usage.cost_usd)  # type: ignore[union-attr]


# --- merge and sources ------------------------------------------------------------------------------------


async def test_live_values_win_and_are_marked_documented(client: QolabaClient) -> None:
    catalog = await live(client).get()
    assert "test/strict" in catalog  # a model only the live list names is added
    for model in catalog:
        assert model.documented and model.price_source == "live", model.id
        assert {"max_images", "aspect_ratios", "supports_seed", "quality_pricing"} <= set(model.live_fields)
        assert not {"max_images", "aspect_ratios", "credits_per_image"} & set(model.assumed), model.id
    pro = catalog.get("vertex/nano-banana-pro")
    assert pro is not None and pro.parameters == Catalog.builtin().get(pro.id).parameters  # type: ignore[union-attr]
    assert pro.assumed == ["parameters"]  # what the list does not say stays marked assumed
    strict = catalog.get("test/strict")
    assert strict is not None and "parameters" in strict.assumed and "temperature" in strict.parameters
    for model in Catalog.builtin():
        assert model.price_source == "built-in (assumed)" and not model.live_fields


def test_parsing_is_tolerant() -> None:
    entries: list[object] = [
        "not an object",
        {"name": "no id"},
        {
            "id": "vertex/imagen-4",
            "maxNumImages": "four",  # unreadable: the built-in value stays, still assumed
            "imageSize": ["1:1", "wide", 7, "0:1"],
            "capabilities": ["text_to_image", "video_magic"],
            "quality": ["1K", "2K", "4K"],
            "quality_pricing": {"1K": 0.04, "2K": "cheap", "4K": 0.16},
        },
        {"id": "new/model", "quality": ["512"], "quality_pricing": {"512": 0.02}, "maxNumImages": 50},
    ]
    catalog, problems = merge_live(Catalog.builtin(), entries)
    assert problems == ["live model #1: no usable id", "live model #2: no usable id"]
    imagen = catalog.get("vertex/imagen-4")
    assert imagen is not None
    assert imagen.max_images == 4 and "max_images" in imagen.assumed and "max_images" not in imagen.live_fields
    assert imagen.aspect_ratios == ["1:1"] and imagen.capabilities == ["text-to-image"]
    assert imagen.price_usd == {"1K": 0.04, "4K": 0.16} and imagen.credits_per_image == pytest.approx(8)
    assert imagen.dimensions("1:1", "4K") == (3840, 3840)  # the built-in size of a preset stays
    new = catalog.get("new/model")
    assert new is not None and new.max_images == 10 and new.supports_seed is False  # absent supportsSeed: no seed
    assert "seed" not in new.parameters and new.price_source == "live"
    assert new.default_quality == "512" and new.dimensions("1:1", None) == (512, 512)  # a new preset gets a size
    assert estimate_usd(new, None, 2) == pytest.approx(0.04)


# --- caching and fallback ---------------------------------------------------------------------------------


async def test_one_fetch_serves_many_uses_until_the_ttl(client: QolabaClient, live_sandbox: SandboxServer) -> None:
    clock = Clock()
    holder = live(client, clock)
    before = model_lists(live_sandbox)
    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(holder.get)
    for _ in range(5):
        await holder.get()
    assert model_lists(live_sandbox) - before == 1 and holder.fetches == 1
    clock.now += 599
    await holder.get()
    assert model_lists(live_sandbox) - before == 1
    clock.now += 2
    await holder.get()
    assert model_lists(live_sandbox) - before == 2 and holder.warning is None


@pytest.mark.parametrize("failure", ["404", "500", "garbage"])
async def test_a_broken_endpoint_falls_back(client: QolabaClient, live_sandbox: SandboxServer, failure: str) -> None:
    clock = Clock()
    holder = live(client, clock)
    live_sandbox.configure(models_endpoint=failure)
    catalog = await holder.get()
    assert [m.id for m in catalog] == [m.id for m in BUILTIN_MODELS] and not holder.is_live
    assert holder.warning is not None and "built-in catalogue" in holder.warning
    assert all(m.price_source == "built-in (assumed)" for m in catalog)
    await holder.get()
    assert holder.fetches == 1  # a failure is not retried on every use

    live_sandbox.configure(models_endpoint="ok")
    clock.now += 61
    assert "test/strict" in await holder.get() and holder.warning is None

    live_sandbox.configure(models_endpoint=failure)
    clock.now += 601
    catalog = await holder.get()  # the last good list, not the built-in one
    assert "test/strict" in catalog and holder.fetches == 3
    assert holder.warning is not None and "fetched 10 min ago" in holder.warning


async def test_a_missing_key_falls_back_too(live_sandbox: SandboxServer) -> None:
    async with QolabaClient(base_url=live_sandbox.base_url, api_key=None) as keyless:
        holder = live(keyless)
        assert len(await holder.get()) == len(BUILTIN_MODELS)
        assert holder.warning is not None and "QOLABA_API_KEY" in holder.warning


# --- prices and checks ------------------------------------------------------------------------------------


async def test_estimates_per_quality(client: QolabaClient) -> None:
    pro = (await live(client).get()).get("vertex/nano-banana-pro")
    assert pro is not None
    assert estimate_usd(pro, None, None) == pytest.approx(0.12)
    assert estimate_usd(pro, "1K", 2) == pytest.approx(0.24)
    assert estimate_usd(pro, "2K", 1) == pytest.approx(0.24)
    assert estimate_usd(pro, "4K", 3) == pytest.approx(1.44)
    assert estimate_usd(pro, "8K", 1) is None
    builtin = Catalog.builtin().get("vertex/nano-banana-pro")
    assert builtin is not None and estimate_usd(builtin, "4K", 1) == pytest.approx(0.48)


def refs(n: int) -> list[ReferenceImage]:
    return [ReferenceImage(url=f"https://example.com/{i}.png") for i in range(n)]


CHECKS: list[tuple[str, dict[str, Any], str | None]] = [
    ("vertex/imagen-4", {"num_images": 4}, None),
    ("vertex/imagen-4", {"num_images": 5}, "num_images: vertex/imagen-4 makes at most 4 images per call; send 4"),
    ("vertex/imagen-4", {"aspect_ratio": "16:9"}, None),
    ("vertex/imagen-4", {"aspect_ratio": "21:9"}, "aspect_ratio: vertex/imagen-4 does not support '21:9'; send one"),
    ("vertex/imagen-4", {"quality": "2K"}, None),
    ("vertex/imagen-4", {"quality": "4K"}, "quality: vertex/imagen-4 has no '4K' preset; send one of 1K, 2K"),
    ("test/strict", {"reference_images": refs(2)}, None),
    ("test/strict", {"reference_images": refs(3)}, "reference_images: test/strict takes at most 2 reference"),
    ("test/strict", {"temperature": 0.5}, None),
    ("test/strict", {"temperature": 1.5}, "temperature: test/strict takes a temperature from 0.5 to 1"),
    ("test/strict", {"temperature": 0.1}, "temperature: test/strict takes a temperature from 0.5 to 1"),
    ("vertex/imagen-4", {"seed": 7}, None),
    ("test/strict", {"seed": 7}, "seed: test/strict does not support a seed; leave seed out"),
]


@pytest.mark.parametrize(("model", "fields", "error"), CHECKS)
async def test_live_limits_are_checked_before_submission(
    client: QolabaClient, model: str, fields: dict[str, Any], error: str | None
) -> None:
    info = (await live(client).get()).get(model)
    assert info is not None
    problem = check_request(info, GenerateRequest(model=model, prompt="p", **fields))
    if error is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(error), problem


@pytest.mark.parametrize(("model", "fields", "error"), [case for case in CHECKS if case[2] is not None])
def test_assumed_values_never_block(model: str, fields: dict[str, Any], error: str) -> None:
    info = Catalog([*BUILTIN_MODELS, STRICT]).get(model)  # the same limits, but only built-in (assumed)
    assert info is not None and not info.live_fields
    assert check_request(info, GenerateRequest(model=model, prompt="p", **fields)) is None
