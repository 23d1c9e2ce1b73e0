"""Read sample values out of a /metrics exposition.

``value`` fails when no sample matches: a deleted or renamed metric must fail the test that
reads it, never read as 0. Where absence is the point, say so with ``has``.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return values


def matching(text: str, name: str, **labels: str) -> list[float]:
    """Every sample called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return [
        sample_value
        for (sample_name, sample_labels), sample_value in samples(text).items()
        if sample_name == name and wanted <= sample_labels
    ]


def has(text: str, name: str, **labels: str) -> bool:
    return bool(matching(text, name, **labels))


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``; fails if none."""
    found = matching(text, name, **labels)
    if not found:
        known = sorted({sample_name for sample_name, _ in samples(text)})
        raise AssertionError(
            f"no sample {name}{labels or ''} in the exposition "
            f"({len(known)} sample names: {', '.join(known)[:2000]})"
        )
    return sum(found)


def scrape(base_url: str, name: str, **labels: str) -> float:
    return value(httpx.get(f"{base_url}/metrics", timeout=10).text, name, **labels)
