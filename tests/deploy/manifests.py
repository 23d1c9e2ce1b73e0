"""Read the deployment files the way their tools do: Dockerfile, compose, k8s, systemd."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from tests.support.server import ROOT, VENV_BIN

DOCKERFILE = ROOT / "docker" / "Dockerfile"
# BuildKit uses docker/Dockerfile.dockerignore; the legacy builder the top-level one.
DOCKERIGNORES = (ROOT / "docker" / "Dockerfile.dockerignore", ROOT / ".dockerignore")
HEALTHCHECK_SCRIPT = ROOT / "docker" / "healthcheck.py"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
UNIT_FILE = ROOT / "deploy" / "systemd" / "sleepwell.service"
INSTALL_SCRIPT = ROOT / "deploy" / "systemd" / "install.sh"
K8S_DIR = ROOT / "deploy" / "k8s"
ADAPTER_VALUES = K8S_DIR / "prometheus-adapter-values.yaml"
ALERT_RULES = ROOT / "alert_rules.yml"
K8S_VERSION = "1.33.0"

# Where the image puts things (Dockerfile) -> where they are in this checkout.
IMAGE_PATHS = {
    "/opt/venv/bin/python": str(VENV_BIN / "python"),
    "/app/healthcheck.py": str(HEALTHCHECK_SCRIPT),
}


# --- Dockerfile ----------------------------------------------------------------------
@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    result: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        keyword, _, args = pending.partition(" ")
        result.append(Instruction(start, keyword.upper(), args.strip()))
        pending = ""
    return result


def dockerfile_env(path: Path = DOCKERFILE) -> dict[str, str]:
    """ENV of the last stage (the image that runs)."""
    instructions = dockerfile_instructions(path)
    last_from = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    env: dict[str, str] = {}
    for ins in instructions[last_from:]:
        if ins.keyword == "ENV":
            for token in shlex.split(ins.args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def dockerfile_args(path: Path = DOCKERFILE) -> dict[str, str]:
    args: dict[str, str] = {}
    for ins in dockerfile_instructions(path):
        if ins.keyword == "ARG":
            key, _, value = ins.args.partition("=")
            args.setdefault(key, value)
    return args


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form CMD/HEALTHCHECK/VOLUME; ValueError if shell form."""
    start = args.index("[")
    value = json.loads(args[start:])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"not an exec-form array: {args}")
    return value


def dockerfile_healthcheck(path: Path = DOCKERFILE) -> tuple[dict[str, str], list[str]]:
    (check,) = [ins for ins in dockerfile_instructions(path) if ins.keyword == "HEALTHCHECK"]
    options_text, _, command = check.args.partition(" CMD ")
    options = dict(
        option[2:].split("=", 1) for option in options_text.split() if option.startswith("--")
    )
    return options, exec_form(command)


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus "**") as a regex."""
    out = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            out.append(".*")
            index += 2
        elif pattern[index] == "*":
            out.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            out.append("[^/]")
            index += 1
        else:
            out.append(re.escape(pattern[index]))
            index += 1
    return re.compile("".join(out))


def dockerignore_allows(relative: str, ignore: Path) -> bool:
    """Whether ``relative`` reaches the build context: the last matching pattern wins,
    and a pattern that matches a parent directory matches everything below it."""
    rules = []
    for raw in ignore.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, _ignore_regex(line.lstrip("!").strip("/"))))
    parts = Path(relative).parts
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    included = True
    for negated, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = negated
    return included


# --- durations (compose "1m30s", Docker "600s") --------------------------------------
def duration_s(text: str | int | float) -> float:
    if isinstance(text, int | float):
        return float(text)
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    matches = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", text)
    if not matches or "".join(a + b for a, b in matches) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(amount) * units[unit] for amount, unit in matches)


# --- YAML ----------------------------------------------------------------------------
def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


def k8s_documents() -> dict[str, dict[str, Any]]:
    """kind -> document, for every manifest the kustomization applies."""
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    documents: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((K8S_DIR / name).read_text(encoding="utf-8")):
            if document:
                documents[document["kind"]] = document
    return documents


# --- systemd -------------------------------------------------------------------------
def unit_entries(path: Path = UNIT_FILE) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every assignment, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            sections.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        sections[section].setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_environment(path: Path = UNIT_FILE) -> dict[str, str]:
    env: dict[str, str] = {}
    for assignment in unit_entries(path)["Service"].get("Environment", []):
        for token in shlex.split(assignment):
            key, _, value = token.partition("=")
            env[key] = value
    return env


# --- scripts that are not in a package ------------------------------------------------
def import_script(path: Path) -> ModuleType:
    """Import a standalone script (docker/*.py, bench/*.py) as a module."""
    name = f"_deploy_{path.parent.name}_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
