"""The pull-request workflow (.github/workflows/pr.yml) and the CI script: valid YAML of the
shape GitHub expects, the three jobs the README promises, and only nox sessions that exist.
actionlint is run too where it is installed (neither PyPI's wheel nor apt carries it here)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / ".github" / "workflows" / "pr.yml"
sys.path.insert(0, str(REPO))
import noxfile  # noqa: E402

yaml = pytest.importorskip("yaml", reason="PyYAML parses the workflow (the test extra has it)")


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def steps_text(job: dict) -> str:
    return "\n".join(str(s.get("run", "")) for s in job["steps"])


def test_the_workflow_has_the_shape_github_expects(workflow):
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert "pull_request" in triggers
    assert workflow["jobs"], "no jobs"
    for name, job in workflow["jobs"].items():
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name), name
        assert "runs-on" in job and job["steps"], name
        assert isinstance(job.get("timeout-minutes"), int), f"{name}: no timeout"
        for step in job["steps"]:
            assert ("run" in step) != ("uses" in step), f"{name}: a step needs run or uses: {step}"
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), step["uses"]


def test_every_pr_runs_the_cpu_suite_and_the_ab_against_the_merge_base(workflow):
    jobs = workflow["jobs"]
    assert ".ci/run" in steps_text(jobs["cpu-suite"])
    ab = jobs["bench-ab"]
    assert "pull_request" in ab["if"]
    assert ab["steps"][0]["uses"].startswith("actions/checkout@")
    assert ab["steps"][0]["with"]["fetch-depth"] == 0  # the base branch must be there
    assert re.search(r"nox -s bench_ab -- \S*BASE_REF\S* --merge-base", steps_text(ab))


def test_the_full_profile_runs_on_a_self_hosted_gpu_runner(workflow):
    gpu = workflow["jobs"]["gpu-full"]
    assert set(gpu["runs-on"]) == {"self-hosted", "gpu"}
    assert re.search(r"nox -s claims\b", steps_text(gpu))


def test_the_gpu_job_is_strict_where_its_gpu_class_has_references_and_keeps_its_cache(workflow):
    gpu = workflow["jobs"]["gpu-full"]
    steps = gpu["steps"]

    def step(text: str) -> dict:
        return next(s for s in steps if text in str(s.get("run", "")))

    cache, tests = step("HARNESS_CACHE"), step("nox -s cuda_tests")
    query, claims = step("--has-references"), step("nox -s claims -- --strict-references")
    # the training cache lives on the runner's own disk, set before anything trains
    assert "runner.tool_cache" in cache["env"]["CACHE"] and "GITHUB_ENV" in cache["run"]
    assert steps.index(cache) < steps.index(tests) < steps.index(query) < steps.index(claims)
    # strict only where references for the runner's GPU class exist (the query's exit status)
    assert re.search(r"if python3 -m nox -s calibrate -- --has-references; then", query["run"])
    assert f"steps.{query['id']}.outputs.strict" in claims["env"]["STRICT"]
    # otherwise non-strict, saying how to make them
    assert re.search(r"else\n(.*\n)*\s*python3 -m nox -s claims\n", claims["run"])
    assert "nox -s calibrate" in claims["run"] and "nox -s calibrate" in query["run"]
    assert "--require-gpu" in tests["run"]  # on a GPU runner, skipped CUDA tests are an error
    for s in steps:
        if "run" in s:
            subprocess.run(["bash", "-n", "-c", s["run"]], check=True)


def test_ci_files_name_only_nox_sessions_that_exist(workflow):
    text = "\n".join(steps_text(j) for j in workflow["jobs"].values())
    text += (REPO / ".ci" / "run").read_text()
    sessions = set(re.findall(r"nox -s (\w+)", text))
    assert sessions >= {"lint", "tests", "claims", "bench_ab", "calibrate", "cuda_tests"}
    for s in sessions:
        assert callable(getattr(noxfile, s, None)), f"no nox session {s!r}"


def test_the_ci_script_installs_a_browser_and_is_valid_bash():
    script = REPO / ".ci" / "run"
    assert "apt-get install" in script.read_text() and "chromium" in script.read_text()
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.skipif(shutil.which("actionlint") is None, reason="actionlint is not installed")
def test_actionlint_passes():
    result = subprocess.run(["actionlint", str(WORKFLOW)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
