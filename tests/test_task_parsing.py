"""Task.from_api: every poll shape the unpublished task endpoint might send."""

from __future__ import annotations

from typing import Any

import pytest

from qolaba_mcp.api._wire import Task

IMG = {"url": "https://x/1.png", "width": 1280, "height": 720, "content_type": "image/png"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("PENDING", "PENDING"),
        ("queued", "PENDING"),
        ("Processing", "PROCESSING"),
        ("in_progress", "PROCESSING"),
        ("IN-PROGRESS", "PROCESSING"),
        ("running", "PROCESSING"),
        ("SUCCESS", "SUCCESS"),
        ("completed", "SUCCESS"),
        ("Succeeded", "SUCCESS"),
        ("FAILED", "FAILED"),
        ("error", "FAILED"),
        ("cancelled", "FAILED"),
        ("something-new", "PROCESSING"),
    ],
)
def test_status_spellings(raw: str, expected: str) -> None:
    task = Task.from_api({"task_id": "t1", "status": raw})
    assert task.status == expected
    assert task.raw_status == raw


@pytest.mark.parametrize(
    "body",
    [
        {"status": "SUCCESS", "images": [IMG]},
        {"status": "SUCCESS", "output": [IMG]},
        {"status": "SUCCESS", "output": {"images": [IMG], "seed": 7}},
        {"status": "SUCCESS", "output": ["https://x/1.png"]},
        {"status": "SUCCESS", "output": "https://x/1.png"},
        {"status": "SUCCESS", "result": {"images": [IMG]}},
        {"task": {"status": "SUCCESS", "images": [IMG]}},
    ],
    ids=["top-level", "output-list", "output-object", "output-urls", "output-url", "result", "nested"],
)
def test_image_locations(body: dict[str, Any]) -> None:
    task = Task.from_api({"task_id": "t1", **body})
    assert [image.url for image in task.images] == ["https://x/1.png"]
    assert task.done


def test_image_details_and_usage_under_output() -> None:
    task = Task.from_api(
        {
            "task_id": "t1",
            "status": "SUCCESS",
            "output": {
                "images": [IMG],
                "seed": 42,
                "prompt": "cat",
                "usage": {"images_generated": 1, "cost_usd": 0.03, "cost_credits": 6},
            },
        }
    )
    assert (task.images[0].width, task.images[0].height) == (1280, 720)
    assert task.seed == 42 and task.prompt == "cat"
    assert task.usage is not None and task.usage.cost_credits == 6


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": "boom"}, "boom"),
        ({"error_detail": "safety filter"}, "safety filter"),
        ({"error": "Generation failed", "error_detail": "no image"}, "Generation failed: no image"),
        ({"error_data": {"message": "quota"}}, "quota"),
        ({"error_data": {"code": 7}}, "code=7"),
        ({"error": {"detail": "bad prompt"}}, "bad prompt"),
        ({}, "the task failed without an error message"),
    ],
)
def test_error_text(body: dict[str, Any], expected: str) -> None:
    task = Task.from_api({"task_id": "t1", "status": "FAILED", **body})
    assert task.error == expected


def test_error_ignored_while_running() -> None:
    assert Task.from_api({"task_id": "t", "status": "PROCESSING", "error": None}).error is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(40, 0.4), (1, 0.01), (0, 0.0), (0.25, 0.25), (1.0, 1.0), (55.5, 0.555), (150, 1.0), ("x", None)],
)
def test_progress(value: object, expected: float | None) -> None:
    assert Task.from_api({"task_id": "t", "status": "RUNNING", "progress": value}).progress == expected


def test_unknown_fields_are_kept() -> None:
    task = Task.from_api({"task_id": "t", "status": "PENDING", "eta_seconds": 9})
    assert task.raw["eta_seconds"] == 9


def test_task_id_from_argument_and_id_alias() -> None:
    assert Task.from_api({"status": "PENDING"}, task_id="abc").task_id == "abc"
    assert Task.from_api({"id": "xyz", "status": "PENDING"}).task_id == "xyz"


@pytest.mark.parametrize("body", [{}, {"status": 3}, {"status": ""}, {"status": "PENDING"}])
def test_unusable_bodies_raise(body: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Task.from_api(body)


# -- the backend's own shape: output.result, low_res_urls, Has_NSFW_Content, error/error_data -----------------------

BACKEND = {
    "task_id": "t1",
    "status": "SUCCESS",
    "seed": 7,
    "usage": {"images_generated": 2, "cost_usd": 0.06, "cost_credits": 12},
    "output": {
        "result": ["https://x/full0.png", "https://x/full1.png"],
        "low_res_urls": ["https://x/small0.jpg", "https://x/small1.jpg"],
        "Has_NSFW_Content": [False, True],
    },
}


def test_backend_result_list_with_previews_and_flags() -> None:
    task = Task.from_api(BACKEND)
    assert task.status == "SUCCESS" and task.seed == 7 and task.usage is not None
    assert [image.url for image in task.images] == ["https://x/full0.png", "https://x/full1.png"]
    assert [image.preview_url for image in task.images] == ["https://x/small0.jpg", "https://x/small1.jpg"]
    assert [image.nsfw for image in task.images] == [False, True]
    assert any("image 2 was flagged by the provider's safety filter" in note for note in task.notes)


def test_a_success_whose_images_were_all_removed_is_a_failure() -> None:
    body = {**BACKEND, "output": {"result": [], "low_res_urls": [], "Has_NSFW_Content": [True, True]}}
    task = Task.from_api(body)
    assert task.status == "FAILED" and task.images == []
    assert task.error is not None and "safety filter removed every image (2)" in task.error
    assert task.usage is not None and task.usage.cost_usd == 0.06  # what it cost is still reported


def test_sync_result_with_every_image_removed_fails_too() -> None:
    from qolaba_mcp.api._wire import GenerateResult
    from qolaba_mcp.generations._runner import _from_result

    result = GenerateResult.from_api({**BACKEND, "output": {"result": [], "Has_NSFW_Content": True}})
    generation = _from_result(result, "m", started=0.0)
    assert generation.status == "FAILED" and "safety filter" in (generation.error or "")
    kept = _from_result(GenerateResult.from_api(BACKEND), "m", started=0.0)
    assert kept.status == "SUCCESS" and len(kept.images) == 2


def test_backend_error_category_and_detail() -> None:
    body = {"task_id": "t2", "status": "FAILED", "error": "Image URL Error", "error_data": "403 from the image host"}
    task = Task.from_api(body)
    assert task.error is not None and "Image URL Error" in task.error and "403 from the image host" in task.error
