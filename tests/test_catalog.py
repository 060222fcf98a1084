"""The model catalogue: documented entries, dimensions, and the user's QOLABA_MODELS_FILE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qolaba_mcp.api._catalog import Catalog, CatalogFileError

DOCUMENTED = [
    "vertex/nano-banana-flash",
    "vertex/nano-banana-pro",
    "vertex/imagen-4",
    "vertex/imagen-4-fast",
    "vertex/imagen-4-ultra",
]


def test_documented_models_are_marked() -> None:
    catalog = Catalog.builtin()
    assert [m.id for m in catalog if m.documented] == DOCUMENTED
    assert catalog.get("vertex/nano-banana-pro").max_images == 10  # type: ignore[union-attr]
    assert catalog.get("vertex/imagen-4-ultra").max_images == 4  # type: ignore[union-attr]
    assert all(m.assumed for m in catalog if not m.documented), "undocumented entries must say what is assumed"
    assert "id" in catalog.get("fal/birefnet").assumed  # type: ignore[union-attr]


def test_image_to_image_models_exist() -> None:
    catalog = Catalog.builtin()
    removal = catalog.with_capability("background-removal")
    assert removal and "prompt" not in removal[0].required and "image_urls" in removal[0].required
    inpainting = catalog.with_capability("inpainting")
    assert inpainting and "mask_url" in inpainting[0].required


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "models.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_user_file_adds_and_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "models": [
                {"id": "vertex/imagen-4", "max_images": 2},
                {"id": "acme/new-model", "name": "New", "parameters": ["prompt", "seed"], "max_images": 3},
            ]
        },
    )
    catalog = Catalog.load(path)
    imagen = catalog.get("vertex/imagen-4")
    assert imagen is not None and imagen.max_images == 2 and imagen.documented  # other fields kept
    new = catalog.get("acme/new-model")
    assert new is not None and new.max_images == 3 and not new.documented
    assert len(catalog) == len(Catalog.builtin()) + 1


def test_user_file_as_plain_list(tmp_path: Path) -> None:
    assert "x/y" in Catalog.load(write(tmp_path, [{"id": "x/y"}]))


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "cannot read JSON"),
        ('{"models": 3}', "expected a list of models"),
        ('[{"id": "a", "max_images": 50}]', "model #1: max_images"),
        ('[{"id": "a", "parameters": ["colour"]}]', "unknown request fields ['colour']"),
        ('[{"name": "no id"}]', "model #1: id"),
    ],
)
def test_bad_user_files_name_the_problem(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "models.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CatalogFileError) as caught:
        Catalog.load(path)
    assert fragment in str(caught.value) and "QOLABA_MODELS_FILE" in str(caught.value)


def test_missing_user_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogFileError, match="cannot read"):
        Catalog.load(tmp_path / "absent.json")
