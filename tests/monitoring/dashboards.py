"""The Grafana dashboards' queries, with template variables filled in as Grafana would."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.server import ROOT

DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
# Series only a GPU deployment has: their panels must run but may come back empty here.
GPU_ONLY = re.compile(
    r"\b(gpu_memory_\w+|gpu_utilization_ratio|gpu_temperature_celsius|DCGM_\w+)\b"
)
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str
    instant: bool

    @property
    def gpu_only(self) -> bool:
        return GPU_ONLY.search(self.expr) is not None

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id}"


def dashboards() -> dict[str, dict[str, Any]]:
    paths = sorted(DASHBOARD_DIR.glob("*.json"))
    return {path.name: json.loads(path.read_text()) for path in paths}


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def panel_queries() -> list[PanelQuery]:
    queries = []
    for name, dashboard in dashboards().items():
        for panel in all_panels(dashboard):
            for target in panel.get("targets", []):
                queries.append(PanelQuery(name, panel.get("title", "?"), target["refId"],
                                          target["expr"], bool(target.get("instant"))))
    return queries


def variable_queries() -> list[tuple[str, str]]:
    """(variable name, query) for every query variable of every dashboard."""
    found = []
    for dashboard in dashboards().values():
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                query = variable["query"]
                text = query["query"] if isinstance(query, dict) else query
                found.append((variable["name"], text))
    return found


def split_label_values(query: str) -> tuple[str | None, str]:
    """``label_values(selector, label)`` -> (selector or None, label)."""
    match = LABEL_VALUES.match(query.strip())
    if match is None:
        raise ValueError(f"not a label_values() query: {query}")
    return match.group("selector"), match.group("label")


def substitute(expr: str, variables: dict[str, str], rate_interval: str, range_: str) -> str:
    """Grafana's interpolation: $__rate_interval, $__range, $__interval and $var."""
    text = expr.replace("$__rate_interval", rate_interval).replace("$__range", range_)
    text = text.replace("$__interval", rate_interval)
    for name in sorted(variables, key=len, reverse=True):
        text = text.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    if "$" in text:
        raise ValueError(f"unresolved variable in {text}")
    return text


def regex_of(values: list[str]) -> str:
    """What Grafana puts in ``=~"$var"`` for "All" of these values."""
    if not values:
        return ".*"
    escaped = [re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\\\1", value) for value in values]
    return "(" + "|".join(escaped) + ")"


def path_of(name: str) -> Path:
    return DASHBOARD_DIR / name
