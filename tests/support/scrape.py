"""Read sample values out of a /metrics exposition."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return values


def value(text: str, name: str, **labels: str) -> float:
    """Sum of all samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(
        sample_value
        for (sample_name, sample_labels), sample_value in samples(text).items()
        if sample_name == name and wanted <= sample_labels
    )


def scrape(base_url: str, name: str, **labels: str) -> float:
    return value(httpx.get(f"{base_url}/metrics", timeout=10).text, name, **labels)
