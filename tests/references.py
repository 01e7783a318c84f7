"""Hand-labelled references on scikit-image's photos (tests/data/<photo>.json; how they were
made: tests/data/README.md): the person's outline, keypoints with tolerances, hand boxes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).parent / "data"


def photo(name: str) -> Image.Image:
    """A scikit-image sample photo as RGB (grey ones converted)."""
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


@dataclass(frozen=True)
class Reference:
    name: str
    doc: dict

    @property
    def keypoints(self) -> dict[str, tuple[float, float, float]]:
        """name -> (x, y, tolerance in px)."""
        return {k: tuple(v) for k, v in self.doc["keypoints"].items()}

    @property
    def hands(self) -> list[tuple[int, int, int, int]]:
        return [tuple(b) for b in self.doc.get("hands", [])]

    def mask(self, held: bool = False) -> np.ndarray:
        """The person's polygons filled (bool, HxW); ``held`` adds what the person holds."""
        import cv2

        image = photo(self.name)
        mask = np.zeros((image.height, image.width), np.uint8)
        for poly in self.doc["include"] + (self.doc.get("held", []) if held else []):
            cv2.fillPoly(mask, [np.array(poly, np.int32)], 1)
        for poly in self.doc.get("exclude", []):
            cv2.fillPoly(mask, [np.array(poly, np.int32)], 0)
        return mask.astype(bool)


def reference(name: str) -> Reference:
    return Reference(name, json.loads((DATA / f"{name}.json").read_text()))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())
