"""docker/Dockerfile: lint, layout, and the commands it runs, checked natively."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from app.settings import Settings
from tests.deploy.manifests import (
    DOCKERFILE,
    DOCKERIGNORES,
    HEALTHCHECK_SCRIPT,
    dockerfile_args,
    dockerfile_env,
    dockerfile_healthcheck,
    dockerfile_instructions,
    dockerignore_allows,
    duration_s,
    exec_form,
    import_script,
)
from tests.support.server import ROOT, VENV_BIN

CHECK_SCRIPT = ROOT / "docker" / "check_torch_cuda.py"


def test_dockerfile_hadolint_reports_nothing() -> None:
    result = subprocess.run(
        [str(VENV_BIN / "hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerfile_each_hadolint_ignore_is_justified_above_it() -> None:
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    ignores = [(i, line) for i, line in enumerate(lines) if "hadolint ignore=" in line]
    assert ignores, "expected the DL3008 ignores to be present and justified"
    for index, line in ignores:
        block = []  # the comment block right above the pragma
        above = index - 1
        while above >= 0 and lines[above].startswith("#") and "ignore=" not in lines[above]:
            block.append(lines[above])
            above -= 1
        for rule in line.split("ignore=", 1)[1].split(","):
            assert any(rule.strip() in comment for comment in block), (
                f"line {index + 1}: ignore of {rule} has no justification comment above it"
            )


def test_dockerfile_is_multistage_on_a_cuda_base() -> None:
    froms = [ins.args for ins in dockerfile_instructions() if ins.keyword == "FROM"]
    assert len(froms) >= 2, froms
    assert all(args.startswith("${BASE_IMAGE}") for args in froms), froms
    base = dockerfile_args()["BASE_IMAGE"]
    assert base.startswith("nvidia/cuda:${CUDA_VERSION}-runtime-"), base


def test_dockerfile_cuda_base_matches_torch_index_by_default() -> None:
    expected_cuda = import_script(CHECK_SCRIPT).expected_cuda
    args = dockerfile_args()
    wanted = expected_cuda(args["TORCH_INDEX_URL"])
    assert wanted is not None
    assert args["CUDA_VERSION"].startswith(f"{wanted}."), (args["CUDA_VERSION"], wanted)
    pin = re.search(r'"torch==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin is not None and args["TORCH_VERSION"] == pin.group(1)


@pytest.mark.parametrize(
    ("index_url", "expect_ok"),
    [("https://download.pytorch.org/whl/cpu", True),
     ("https://download.pytorch.org/whl/cu128", False)],
)
def test_check_torch_cuda_against_installed_cpu_torch_passes_only_for_cpu_index(
    index_url: str, expect_ok: bool,
) -> None:
    env = {**os.environ, "TORCH_INDEX_URL": index_url}
    env.pop("CUDA_VERSION", None)
    result = subprocess.run(
        [str(VENV_BIN / "python"), str(CHECK_SCRIPT)], env=env, capture_output=True,
        text=True, timeout=120, check=False,
    )
    assert (result.returncode == 0) is expect_ok, result.stdout + result.stderr


def test_check_torch_cuda_matching_versions_report_no_problem() -> None:
    problems = import_script(CHECK_SCRIPT).problems
    index = "https://download.pytorch.org/whl/cu128"
    assert problems(index, "12.8", "12.8.1") == []
    assert problems(index, "12.6", "12.8.1")
    assert problems(index, "12.8", "12.6.3")
    assert problems(index, "12.8", "")
    assert problems("https://download.pytorch.org/whl/cpu", None, "") == []


def test_dockerfile_copy_sources_exist_and_reach_the_build_context() -> None:
    copies = [ins for ins in dockerfile_instructions() if ins.keyword == "COPY"]
    local = [ins for ins in copies if "--from=" not in ins.args]
    assert local
    for ins in local:
        sources = [token for token in ins.args.split() if not token.startswith("--")][:-1]
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"line {ins.line}: {source} does not exist"
            files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                for ignore in DOCKERIGNORES:
                    assert dockerignore_allows(relative, ignore), f"{ignore} drops {relative}"


@pytest.mark.parametrize("ignore", DOCKERIGNORES, ids=lambda path: path.name)
def test_dockerignore_keeps_secrets_and_venv_out_of_the_context(ignore: Path) -> None:
    for path in (".env", "secrets/feishu_webhook_url", ".venv/bin/python", ".git/config",
                 ".cache/demo-model/unet/x.safetensors", "tests/conftest.py",
                 "app/__pycache__/main.cpython-311.pyc"):
        assert not dockerignore_allows(path, ignore), path


def test_dockerfile_runtime_user_is_not_root() -> None:
    users = [ins.args for ins in dockerfile_instructions() if ins.keyword == "USER"]
    assert users, "no USER instruction"
    user = users[-1].replace("${UID}", dockerfile_args()["UID"]).split(":")[0]
    assert user not in ("root", "0"), users[-1]
    assert user.isdigit() and int(user) >= 1000, "a numeric uid lets runAsNonRoot verify it"


def test_dockerfile_healthcheck_is_exec_form_on_ready() -> None:
    options, command = dockerfile_healthcheck()
    assert command[0] == "/opt/venv/bin/python" and command[1] == "/app/healthcheck.py"
    copied = [ins.args for ins in dockerfile_instructions()
              if ins.keyword == "COPY" and "docker/healthcheck.py" in ins.args]
    assert copied and copied[0].split()[-1] in ("./", "/app/"), copied
    assert import_script(HEALTHCHECK_SCRIPT).READY_PATH == "/health/ready"
    assert duration_s(options["start-period"]) >= 300, "model loading needs a long start"


def test_dockerfile_metrics_dir_is_on_tmpfs_and_model_cache_is_a_volume() -> None:
    env = dockerfile_env()
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/dev/shm/")
    (volume,) = [ins.args for ins in dockerfile_instructions() if ins.keyword == "VOLUME"]
    assert env["HF_HOME"] in exec_form(volume)


def test_dockerfile_port_and_bind_match_settings() -> None:
    env = dockerfile_env()
    exposed = [ins.args for ins in dockerfile_instructions() if ins.keyword == "EXPOSE"]
    assert exposed == [env["SLEEPWELL_PORT"]]
    assert int(env["SLEEPWELL_PORT"]) == Settings.model_fields["port"].default
    assert env["SLEEPWELL_HOST"] == "0.0.0.0"


def test_dockerfile_cmd_runs_gunicorn_with_the_config() -> None:
    (cmd,) = [exec_form(ins.args) for ins in dockerfile_instructions() if ins.keyword == "CMD"]
    assert cmd[:3] == ["gunicorn", "-c", "/app/gunicorn.conf.py"], cmd
    assert "--worker-tmp-dir" in cmd and cmd[cmd.index("--worker-tmp-dir") + 1] == "/dev/shm"


def test_dockerfile_model_chmod_makes_0600_weights_readable(tmp_path: Path) -> None:
    """Run the Dockerfile's own chmod on a tree saved the way safetensors can save it."""
    (run,) = [ins.args for ins in dockerfile_instructions()
              if ins.keyword == "RUN" and "app.serving.demo_model" in ins.args]
    match = re.search(r"chmod (-R \S+) (\S+)", run)
    assert match, run
    tree = tmp_path / "model"
    (tree / "unet").mkdir(parents=True)
    weights = tree / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\0" * 16)
    weights.chmod(0o600)
    (tree / "unet").chmod(0o700)
    subprocess.run(["chmod", *match.group(1).split(), str(tree)], check=True, timeout=10)
    for path in [tree, *tree.rglob("*")]:
        mode = path.stat().st_mode
        assert mode & stat.S_IROTH, f"{path} not world-readable"
        assert not mode & stat.S_IWOTH, f"{path} world-writable"
        if path.is_dir():
            assert mode & stat.S_IXOTH, f"{path} not traversable"


def test_healthcheck_script_uses_only_the_standard_library() -> None:
    imports = re.findall(r"^(?:from|import) (\w+)", HEALTHCHECK_SCRIPT.read_text(), re.M)
    assert set(imports) <= {"__future__", "os", "sys", "urllib", "collections"}, imports
