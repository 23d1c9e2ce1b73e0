"""Generate deploy/k8s/prometheusrule.yaml from the top-level alert_rules.yml.

alert_rules.yml is the one source of truth for alerts: Prometheus (docker-compose
monitoring stack) loads it directly, kube-prometheus-stack gets the same groups wrapped
in a PrometheusRule. After editing alert_rules.yml run:

    .venv/bin/python deploy/k8s/generate_prometheusrule.py

``--check`` writes nothing and exits 1 when the committed file is stale (the test suite
runs the same comparison).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "alert_rules.yml"
TARGET = ROOT / "deploy" / "k8s" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from alert_rules.yml by deploy/k8s/generate_prometheusrule.py. Do not edit:
# change alert_rules.yml, then run .venv/bin/python deploy/k8s/generate_prometheusrule.py
# kube-prometheus-stack loads PrometheusRules labelled release=<its Helm release name>.
"""


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL, descriptions) as readable | blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def load_groups(source: Path = SOURCE) -> list[dict[str, Any]]:
    document = yaml.safe_load(source.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or not isinstance(document.get("groups"), list):
        raise ValueError(f"{source}: expected a Prometheus rule file with 'groups'")
    return document["groups"]


def build(groups: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "sleepwell",
            "labels": {
                "app.kubernetes.io/name": "sleepwell",
                "release": "kube-prometheus-stack",
            },
        },
        "spec": {"groups": groups},
    }


def render(source: Path = SOURCE) -> str:
    body = yaml.dump(build(load_groups(source)), Dumper=_BlockDumper, sort_keys=False,
                     width=100, allow_unicode=True)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--target", type=Path, default=TARGET)
    args = parser.parse_args(argv)
    text = render(args.source)
    if args.check:
        current = args.target.read_text(encoding="utf-8") if args.target.exists() else ""
        if current != text:
            print(f"{args.target} is stale: run {Path(__file__).relative_to(ROOT)}",
                  file=sys.stderr)
            return 1
        print(f"{args.target} matches {args.source}")
        return 0
    args.target.write_text(text, encoding="utf-8")
    print(f"wrote {args.target} from {args.source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
