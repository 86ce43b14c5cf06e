"""The report's building blocks: a heading or paragraph, a table, an image (expo.report renders them
to HTML and Markdown; expo.report and expo.arm_report build them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Table:
    id: str
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    file: str  # PNG file name beside the report
    png: bytes
    alt: str


Block = tuple[str, Any]  # ("h2" | "p", text) | ("table", Table) | ("img", Image)

__all__ = ["Block", "Image", "Table"]
