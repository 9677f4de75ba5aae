"""The documentation: README.md opens with the two commands, and the docs site builds with
`mkdocs build --strict` (mkdocs.yml), which fails on a broken link or anchor, in a page or in
README.md, and on a page missing from the nav or a nav entry without its page."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

#: the README's two commands, byte for byte: the first sets up and runs the main job on the
#: bundled demo, the second sets up and runs the tests (.ci/run runs it)
MAIN_COMMAND = ("python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e . && "
                ".venv/bin/harness weights fetch all && .venv/bin/harness run --protocol demo --method all")
TEST_COMMAND = ('python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e ".[dev]" && '
                ".venv/bin/python -m pytest -n 2 --dist loadfile")


def test_the_readme_opens_with_the_two_commands():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert lines[:6] == ["# CodeSwap harness", "", "```bash", MAIN_COMMAND, TEST_COMMAND, "```"]


def test_ci_runs_the_readmes_second_command():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    last = [line for line in ci.splitlines() if line.strip() and not line.startswith("#")][-1]
    # .ci/run adds only pip's -q
    assert last.replace("pip install -q ", "pip install ") == TEST_COMMAND


def test_the_install_page_shows_the_same_two_commands():
    page = (REPO / "docs" / "install.md").read_text(encoding="utf-8")
    assert f"```bash\n{MAIN_COMMAND}\n{TEST_COMMAND}\n```" in page


def test_the_readme_stays_short():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(root / "mkdocs.yml"), "--site-dir", str(site)],
                          cwd=root, capture_output=True, text=True, timeout=600)


def test_the_docs_site_builds_strict_without_a_warning(tmp_path):
    r = _build(REPO, tmp_path / "site")
    log = r.stdout + r.stderr
    assert r.returncode == 0, log
    assert "WARNING" not in log, log
    # every page of docs/ is in the site, README.md as its home page with its links into docs/
    for page in (REPO / "docs").glob("*.md"):
        assert (tmp_path / "site" / page.stem / "index.html").is_file(), page.name
    home = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert 'href="install/#installing-beside-your-own-stack"' in home
    assert 'src="report-screenshot.png"' in home


def _copy(tmp_path: Path) -> Path:
    """The files the docs build reads, copied so that a test can break them."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "docs", root / "docs")
    (root / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "mkdocs_readme_index.py", root / "scripts")
    for name in ("mkdocs.yml", "README.md"):
        shutil.copy2(REPO / name, root / name)
    return root


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + "\n" + text + "\n", encoding="utf-8")


BREAKS = {
    "a page links to a missing page": (
        lambda root: _append(root / "docs" / "caching.md", "See [nowhere](no-such-page.md)."),
        "no-such-page.md"),
    "a page links to a missing anchor": (
        lambda root: _append(root / "docs" / "caching.md", "See [weights](metrics.md#no-such-anchor)."),
        "no-such-anchor"),
    "a page links to a missing anchor of its own": (
        lambda root: _append(root / "docs" / "caching.md", "See [above](#no-such-heading)."),
        "no-such-heading"),
    "a page links to a missing README anchor": (
        lambda root: _append(root / "docs" / "caching.md", "See [the README](../README.md#no-such-section)."),
        "no-such-section"),
    "README.md links to a missing page": (
        lambda root: _append(root / "README.md", "- [Nowhere](docs/no-such-page.md)"),
        "no-such-page.md"),
    "README.md links to a missing anchor": (
        lambda root: _append(root / "README.md", "- [Weights](docs/metrics.md#no-such-anchor)"),
        "no-such-anchor"),
    "README.md links outside docs/": (
        lambda root: _append(root / "README.md", "See [the pins](constraints.txt)."),
        "constraints.txt"),
    "a page is missing from the nav": (
        lambda root: (root / "docs" / "orphan.md").write_text("# Orphan\n", encoding="utf-8"),
        "orphan.md"),
    "a nav entry has no page": (
        lambda root: (root / "docs" / "caching.md").unlink(),
        "caching.md"),
}


def test_the_copy_builds_before_it_is_broken(tmp_path):
    r = _build(_copy(tmp_path), tmp_path / "site")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("case", list(BREAKS))
def test_the_docs_check_fails_on(case, tmp_path):
    root = _copy(tmp_path)
    breaks, named = BREAKS[case]
    breaks(root)
    r = _build(root, tmp_path / "site")
    log = r.stdout + r.stderr
    assert r.returncode != 0, log
    warnings = re.findall(r"^WARNING +- .*(?:\n[ \t]+\S.*)*", log, re.MULTILINE)  # a record and its indented lines
    assert any(named in w for w in warnings), log
    assert "Aborted with" in log and "in strict mode" in log, log
