"""Choosing rows and splitting them: level filter, dedupe, `max_rows` cap, seeded stratified split.

The split is stratified by level, so every level with 2+ rows has questions held out: evaluation by
level (the ladder's levels 1-4, MATH's 1-5) always has something to measure on each.

Randomness comes from hashing `seed:id`, not from a random generator walking the rows, so a row's fate
depends only on the seed, its id and its level's size: reordering the source, or adding rows at another
level, does not reshuffle the rest.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Collection
from typing import Any

from expo.data.normalize import question_key

Row = dict[str, Any]


def _rank(seed: int, row_id: str) -> str:
    return hashlib.sha256(f"{seed}:{row_id}".encode()).hexdigest()


def filter_levels(rows: list[Row], levels: list[int] | None, skipped: Counter[str]) -> list[Row]:
    if levels is None:
        return rows
    wanted = set(levels)
    kept = [r for r in rows if r["level"] in wanted]
    skipped["filtered_level"] += len(rows) - len(kept)
    return kept


def dedupe(rows: list[Row], skipped: Counter[str], already: Collection[str] = ()) -> list[Row]:
    """Keep the first row of each normalised question; questions in `already` (kept from an earlier
    source) are duplicates too."""
    seen: set[str] = set(already)
    kept = []
    for row in rows:
        key = question_key(row["question"])
        if key in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(key)
        kept.append(row)
    return kept


def cap(rows: list[Row], max_rows: int | None, seed: int, skipped: Counter[str]) -> list[Row]:
    """A seeded sample of `max_rows` rows (not the first ones: sources are often sorted by subject),
    kept in source order."""
    if max_rows is None or len(rows) <= max_rows:
        return rows
    chosen = {r["id"] for r in sorted(rows, key=lambda r: _rank(seed, r["id"]))[:max_rows]}
    skipped["over_max_rows"] += len(rows) - max_rows
    return [r for r in rows if r["id"] in chosen]


def eval_count(n: int, eval_fraction: float) -> int:
    """Rows of a level held out: round(n * f), at least 1 when the level has 2+ rows and f > 0, and
    always leaving 1 to train on."""
    if n < 2 or eval_fraction <= 0.0:
        return 0
    return min(n - 1, max(1, int(n * eval_fraction + 0.5)))


def split(rows: list[Row], eval_fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """(train, eval), stratified by level (None is a level of its own); both in source order."""
    by_level: dict[Any, list[Row]] = defaultdict(list)
    for row in rows:
        by_level[row["level"]].append(row)
    eval_ids: set[str] = set()
    for group in by_level.values():
        ranked = sorted(group, key=lambda r: _rank(seed, r["id"]))
        eval_ids.update(r["id"] for r in ranked[: eval_count(len(group), eval_fraction)])
    train = [r for r in rows if r["id"] not in eval_ids]
    held = [r for r in rows if r["id"] in eval_ids]
    return train, held
