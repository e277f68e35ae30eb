"""The Dockerfile and CI install the project the way the README says."""

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_setup_and_test_commands_are_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci/run").read_text()
    setup = re.search(r"<!-- setup -->\s*```bash\n(.+?)\n```", readme, re.S).group(1).strip()
    test = re.search(r"<!-- test -->\s*```bash\n(.+?)\n```", readme, re.S).group(1).strip()
    assert setup in ci and test in ci


def test_dockerfile_installs_like_readme_and_sets_offline_env():
    docker = (REPO / "Dockerfile").read_text()
    assert 'pip install -e ".[dev]"' in docker
    assert "DVC_NO_ANALYTICS=1" in docker and "HF_HUB_OFFLINE=1" in docker
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    py = re.search(r"FROM python:(\d+\.\d+)", docker).group(1)
    # tomllib (used here) is Python >= 3.11: the floor pyproject.toml states, and the image's
    minimum = tuple(map(int, project["requires-python"].removeprefix(">=").split(".")))
    assert minimum >= (3, 11) and tuple(map(int, py.split("."))) >= minimum
    pins = [d for d in project["dependencies"] if d.startswith(("torch==", "torchvision=="))]
    assert len(pins) == 2  # exact pins: the image and every machine get the same torch


def test_dvc_analytics_off_in_committed_config():
    assert re.search(r"analytics\s*=\s*false", (REPO / ".dvc/config").read_text())


def test_readme_documents_the_gpu_docker_run_and_torchrun():
    readme = (REPO / "README.md").read_text()
    docker = readme[readme.index("## Docker") :]
    assert "--gpus all --shm-size 8g" in docker and ".cache/huggingface" in docker
    assert "torchrun --standalone --nproc-per-node" in readme
    assert "dvc remote add" in readme
