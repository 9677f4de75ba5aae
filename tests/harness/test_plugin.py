"""A third-party package adds a method through the ``codeswap_harness.methods`` entry point.

The example package (tests/plugin_example) is pip-installed offline (no build isolation,
no dependencies) into a temporary target folder that goes on PYTHONPATH; the harness CLI
then runs in a subprocess that sees it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, harness_cli

PLUGIN = Path(__file__).resolve().parents[1] / "plugin_example"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    target = tmp_path_factory.mktemp("plugin-site")
    work = tmp_path_factory.mktemp("plugin-build")
    import shutil

    src = work / "plugin_example"
    shutil.copytree(PLUGIN, src)  # build in a copy: the source tree stays clean
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(target), str(src)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(target)])
    return env


def test_plugin_listed(plugin_env):
    proc = harness_cli("list", "methods", env=plugin_env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("mirror_blend"))
    assert "[plugin: codeswap-plugin-example]" in line and "ready" in line


def test_plugin_runs_with_option(plugin_env, tmp_path):
    proc = harness_cli("run", "--protocol", "demo", "--num-pairs", "3", "--method", "mirror_blend",
                       "--method-option", "mirror_blend.weight=1.0", "--out", str(tmp_path), "--no-mlflow",
                       "--no-report", env=plugin_env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(next((tmp_path / "runs" / "demo").glob("mirror_blend-*/summary.json")).read_text())
    assert summary["method_info"] == {"name": "mirror_blend", "weight": 1.0}
    # weight 1.0 returns the source: identity similarity to the source is (numerically) 1
    assert summary["metrics"]["id_similarity_sface"]["value"] > 0.999
