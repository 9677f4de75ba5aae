"""Nothing silent, nothing torn: bad outputs, bad inputs, kills and concurrent runs (issue 14).

Every case builds its bad input here (tests/bad_inputs.py) and checks what the harness
does with it: a one-line error, a counted skip, or a flagged output; never a traceback,
never a silent drop, never a half-written file.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import bad_inputs as bi
from faceeval.errors import HarnessError
from helpers import HANG_GUARD_S, REPO

PYPATH = os.pathsep.join([str(REPO), str(REPO / "tests")])  # subprocesses import bad_inputs too


def cli(*args: str, cwd: Path | None = None, bad_methods: bool = False, env: dict | None = None):
    env = {**os.environ, "HARNESS_DEBUG": "", "PYTHONPATH": PYPATH, "OMP_NUM_THREADS": "1", **(env or {})}
    head = [sys.executable, "-c", bi.CLI_WITH_BAD_METHODS] if bad_methods else [sys.executable, "-m", "harness.cli"]
    return subprocess.run([*head, *args], capture_output=True, text=True, env=env, cwd=cwd or REPO)


def one_line_error(proc, *fragments: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = err.splitlines()
    # the error is the last line and the only one (info lines such as "demo: 2 pairs" may precede it)
    assert lines[-1].startswith("error: ") and sum(ln.startswith("error") for ln in lines) == 1, err
    for f in fragments:
        assert f in lines[-1], err
    return lines[-1]


# -- item 7 and 10: image decoding ---------------------------------------------------------
def test_16bit_grey_png_decodes_to_the_face_not_white(tmp_path):
    from faceeval.images import load_rgb

    img = load_rgb(bi.png_16bit_grey(tmp_path / "g16.png"))
    grey = bi.demo_face(0).astype(np.float64).mean(axis=2)
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8
    assert np.abs(img[..., 0].astype(np.float64) - grey).max() <= 1.0  # not clipped to 255


def test_decompression_bomb_is_a_one_line_error(tmp_path):
    from faceeval.images import load_rgb

    with pytest.raises(HarnessError, match="decompression bomb"):
        load_rgb(bi.decompression_bomb(tmp_path / "bomb.png"))


# -- items 2 and 3: method outputs are checked per pair ----------------------------------
def _run_bad(method, out: Path, metrics=None, num_pairs: int = 4):
    from faceeval.cache import FeatureStore
    from faceeval.metrics.expression import ExpressionMetric
    from faceeval.metrics.pose import PoseMetric
    from harness.runner import RunConfig, run_method
    from protocols.demo import DemoProtocol

    pairset = DemoProtocol(num_pairs=num_pairs).build()
    cfg = RunConfig(out_dir=out, batch_size=4, progress=False, bootstrap_resamples=200)
    features = FeatureStore(out / "cache" / "features.sqlite")
    try:
        return run_method(method, pairset, metrics or [PoseMetric(), ExpressionMetric()], cfg, features)
    finally:
        features.close()


def test_non_finite_outputs_are_flagged_and_never_scored(tmp_path):
    s = _run_bad(bi.NaNMethod(), tmp_path)
    assert s.output_checks["non_finite"] == 4 and s.output_checks["flagged"] == 4
    for key in ("pose_error_pnp", "expression_error_lmk"):
        assert s.metrics[key].n == 0 and not np.isfinite(s.metrics[key].value)
    rows = pd.read_parquet(Path(s.run_dir) / "pairs.parquet")
    assert (rows["output_flag"] == "non_finite").all() and rows["pose_error_pnp"].isna().all()
    assert any("4 of 4 outputs flagged (4 non finite" in n for n in s.notes)
    again = _run_bad(bi.NaNMethod(), tmp_path)  # served from the cache: the flag is kept with the swap
    assert again.swaps["computed"] == 0 and again.output_checks["non_finite"] == 4


def test_blank_and_faceless_outputs_are_flagged_not_scored_as_faces(tmp_path):
    blank = _run_bad(bi.BlankMethod(), tmp_path)
    assert blank.output_checks["blank"] == 4
    assert blank.metrics["pose_error_pnp"].n == 0  # a white image no longer scores a pose
    noface = _run_bad(bi.NoFaceMethod(), tmp_path)
    assert noface.output_checks["no_face"] == 4
    assert noface.metrics["expression_error_lmk"].n == 0
    half = _run_bad(bi.HalfBadMethod(), tmp_path)
    assert half.output_checks["blank"] == 2 and half.metrics["pose_error_pnp"].n == 2
    assert any("2 of 4 outputs flagged (2 blank" in n for n in half.notes)


def test_pose_and_expression_give_no_fallback_landmarks_to_outputs(tmp_path):
    """Without the runner's check, the metrics themselves score a faceless output NaN."""
    from faceeval.api import EvalBatch, EvalContext
    from faceeval.cache import FeatureStore
    from faceeval.images import pixel_sha256
    from faceeval.metrics.expression import ExpressionMetric
    from faceeval.metrics.pose import PoseMetric

    target = np.stack([bi.demo_face(0), bi.demo_face(1)])
    white = np.full_like(target, 255)
    store = FeatureStore(tmp_path / "f.sqlite")
    ctx = EvalContext(pairset=None, device="cpu", feature_cache=store, load_image=None, image_sha=None)
    batch = EvalBatch(pair_ids=["0", "1"], source=target, target=target, swapped=white,
                      source_sha=[pixel_sha256(t) for t in target], target_sha=[pixel_sha256(t) for t in target],
                      swapped_sha=[pixel_sha256(w) for w in white])
    for metric in (PoseMetric(), ExpressionMetric()):
        values = next(iter(metric.update(batch, ctx).values()))
        assert np.isnan(values).all(), (metric.name, values)
        assert any("no face detected in 1 distinct method outputs" in n for n in metric.notes())
    store.close()


def test_report_footer_names_flagged_outputs_per_method(tmp_path):
    from reports.tables import build_table, to_markdown

    _run_bad(bi.BlankMethod(), tmp_path)
    from faceeval.summaries import load_summaries

    md = to_markdown(build_table(load_summaries(tmp_path)))
    assert "left out of the per-pair means" in md and "blank_method 4 of 4" in md


# -- item 4 and atomic writes --------------------------------------------------------------
def test_torn_summary_is_skipped_with_a_message_not_a_traceback(tmp_path):
    from faceeval.summaries import load_summaries

    bi.torn_summary(tmp_path)
    _run_bad(bi.BlankMethod(), tmp_path, num_pairs=2)
    bad: list[Path] = []
    assert len(load_summaries(tmp_path, bad)) == 1 and len(bad) == 1
    proc = cli("report", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "skipped unreadable run summary" in proc.stderr and "Traceback" not in proc.stderr


def test_run_files_are_written_by_rename(tmp_path, monkeypatch):
    """summary.json, pairs.parquet, the manifest and report tables go through one atomic
    writer: a write that dies midway leaves the previous file, never half of one."""
    import faceeval.images as images

    written = []
    real = images.atomic_write_bytes
    monkeypatch.setattr(images, "atomic_write_bytes", lambda p, d: (written.append(Path(p).name), real(p, d))[1])
    import harness.runner as runner

    monkeypatch.setattr(runner, "atomic_write_bytes", images.atomic_write_bytes)
    _run_bad(bi.BlankMethod(), tmp_path, num_pairs=2)
    assert {"summary.json", "pairs.parquet", "pairs.csv", "gallery.csv"} <= set(written)
    assert not list(tmp_path.rglob(".tmp-*"))


# -- items 5, 6, 9, 11: the folder protocol ------------------------------------------------
def _folder(root: Path, cache: Path, **kw):
    from protocols.folder import FolderProtocol

    return FolderProtocol(root=root, cache_dir=cache, **kw)


def test_same_stem_photos_get_their_own_crops(tmp_path):
    root = bi.same_stem_folder(tmp_path / "photos")
    ps = _folder(root, tmp_path / "cache").build()
    crops = {g.path for g in ps.gallery}
    assert {"alex.jpg.png", "alex.png.png"} <= crops and len(ps.gallery) == 4
    a, b = (np.asarray(Image.open(ps.path(c))) for c in ("alex.jpg.png", "alex.png.png"))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 10  # two people, two crops
    (root / "alex.png").unlink()
    ps2 = _folder(root, tmp_path / "cache").build()
    crop = np.asarray(Image.open(ps2.path("alex.png")))  # alex.jpg alone now: its own face again
    assert np.abs(crop.astype(int) - a.astype(int)).mean() < 3
    assert ps2.manifest_sha256 != ps.manifest_sha256


def test_root_below_a_dot_folder_is_not_empty(tmp_path):
    root = bi.photo_folder(tmp_path / ".hidden" / "photos", 3)
    bi.photo_folder(root / ".thumbs", 1)  # dot-folders inside the root are still ignored
    ps = _folder(root, tmp_path / "cache").build()
    assert len(ps.gallery) == 3


def test_symlinks_out_of_the_root_and_dangling_ones_are_counted_skips(tmp_path):
    root = bi.folder_with_links(tmp_path / "photos", tmp_path / "private")
    ps = _folder(root, tmp_path / "cache").build()
    assert len(ps.gallery) == 3 and all("escape" not in g.path for g in ps.gallery)
    rows = list(csv.DictReader(open(next((tmp_path / "cache").rglob("skipped.csv")))))
    assert {(r["path"], r["reason"]) for r in rows} == {("escape.png", "outside_root"),
                                                        ("dangling.png", "dangling_symlink")}
    assert any("2 skipped" in n for n in ps.notes)


def test_skipped_csv_is_quoted(tmp_path):
    root = bi.comma_named_folder(tmp_path / "photos")
    _folder(root, tmp_path / "cache").build()
    rows = list(csv.DictReader(open(next((tmp_path / "cache").rglob("skipped.csv")))))
    assert len(rows) == 1 and rows[0]["path"] == 'smith, "jr".png' and rows[0]["reason"] == "unreadable"


def test_more_pairs_than_photos_is_an_error_not_repeated_pairs(tmp_path):
    root = bi.photo_folder(tmp_path / "photos", 3)
    with pytest.raises(HarnessError, match="--num-pairs 10 is more than the 3 distinct pairs"):
        _folder(root, tmp_path / "cache", num_pairs=10).build()
    assert len(_folder(root, tmp_path / "cache", num_pairs=3).build().pairs) == 3


def test_16bit_photo_in_a_folder_is_aligned_not_skipped(tmp_path):
    root = bi.photo_folder(tmp_path / "photos", 2)
    bi.png_16bit_grey(root / "grey16.png", 4)
    ps = _folder(root, tmp_path / "cache").build()
    assert len(ps.gallery) == 3, ps.notes


def test_detection_progress_bar_stays_out_of_redirected_stderr(tmp_path):
    root = bi.photo_folder(tmp_path / "photos", 1)  # one identity: fails right after detection
    proc = cli("run", "-p", "folder", "--root", str(root), "-m", "source", "--out", str(tmp_path / "o"),
               "--no-mlflow", "--device", "cpu")
    one_line_error(proc, "fewer than 2 identities")
    assert "detect + align" not in proc.stderr


# -- item 8: training data checked up front ------------------------------------------------
def test_training_images_are_checked_before_training(tmp_path):
    from codeswap.data import list_images

    root = bi.training_folder(tmp_path / "faces")
    with pytest.raises(HarnessError, match=r"1 of 8 training images cannot be read: .*p3\.png"):
        list_images(root)
    bi.decompression_bomb(root / "bomb.png")
    with pytest.raises(HarnessError, match="2 of 9 training images"):
        list_images(root)


def test_train_command_names_the_bad_file_in_one_line(tmp_path):
    root = bi.training_folder(tmp_path / "faces")
    proc = cli("train", "stage1", "--data", str(root), "--out", str(tmp_path / "run"), "--max-steps", "1",
               "--batch-size", "2", "--no-mlflow", "--device", "cpu", "--num-workers", "1")
    one_line_error(proc, "p3.png")  # found up front, not through a DataLoader worker's traceback
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


# -- item 10: one-line errors ----------------------------------------------------------------
@pytest.mark.parametrize("loader", ["hopenet", "deep3d", "iresnet"])
@pytest.mark.parametrize("content", ["garbage", "list", "wrong_keys", "wrong_shape"])
def test_bad_metric_weight_files_are_one_line_errors(tmp_path, loader, content):
    import torch

    path = tmp_path / "w.pth"
    if content == "garbage":
        bi.garbage_weights(path)
    elif content == "list":
        bi.torch_file(path, [1, 2, 3])
    elif content == "wrong_keys":
        bi.torch_file(path, {"not_a_layer.weight": torch.zeros(3)})
    else:
        from faceeval.models.hopenet import Hopenet

        sd = {k: torch.zeros(v.shape[0] + 1) if v.ndim == 1 else v for k, v in Hopenet().state_dict().items()}
        bi.torch_file(path, {k.removeprefix("trunk."): v for k, v in sd.items()})
    if loader == "hopenet":
        from faceeval.models.hopenet import load_hopenet as load
    elif loader == "deep3d":
        from faceeval.models.deep3d import load_deep3d as load
    else:
        from faceeval.models.iresnet import load_iresnet

        def load(p):
            return load_iresnet(p, "r50")
    with pytest.raises(HarnessError) as info:
        load(path)
    assert "\n" not in str(info.value) and "w.pth" in str(info.value)


@pytest.mark.parametrize("content", ["garbage", "list", "missing_keys", "wrong_shapes"])
def test_bad_codeswap_checkpoints_are_one_line_errors(tmp_path, content):
    import torch

    from codeswap.checkpoints import load_codeswap, load_stage1

    path = tmp_path / "ckpt.pt"
    if content == "garbage":
        bi.garbage_weights(path)
    elif content == "list":
        bi.torch_file(path, ["stage2"])
    elif content == "missing_keys":
        bi.torch_file(path, {"stage": "stage2", "step": 3})
    else:
        from codeswap.checkpoints import plain
        from codeswap.config import AutoencoderConfig

        bi.torch_file(path, {"stage": "stage1", "model_config": plain(AutoencoderConfig()),
                             "model": {"encoder.conv_in.weight": torch.zeros(1, 1)}})
    load = load_stage1 if content == "wrong_shapes" else load_codeswap
    with pytest.raises(HarnessError) as info:
        load(path)
    assert "\n" not in str(info.value) and "ckpt.pt" in str(info.value)


def test_malformed_export_json_is_a_one_line_error(tmp_path):
    outputs = bi.malformed_export(tmp_path / "exp" / "outputs")
    proc = cli("run", "-p", "demo", "--num-pairs", "2", "-m", "precomputed", "--method-option",
               f"precomputed.dir={outputs}", "--out", str(tmp_path / "o"), "--no-mlflow", "--device", "cpu",
               "--metric", "pose")
    one_line_error(proc, "export.json", "not a readable harness export")


@pytest.mark.parametrize(("args", "fragment"), [
    (["--device", "bogus"], "--device 'bogus' is not a device"),
    (["--device", "cuda:7"], "--device cuda:7"),
])
def test_bad_device_fails_before_any_work(tmp_path, args, fragment):
    proc = cli("run", "-p", "demo", "-m", "source", "--out", str(tmp_path / "o"), "--no-mlflow", *args)
    one_line_error(proc, fragment)
    assert not (tmp_path / "o" / "runs").exists()


def test_out_pointing_at_a_file_is_a_one_line_error(tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    one_line_error(cli("run", "-p", "demo", "-m", "source", "--out", str(target), "--no-mlflow", "--device", "cpu"),
                   "is a file, not a folder")
    one_line_error(cli("report", "--out", str(target)), "is a file, not a folder")


@pytest.mark.parametrize(("args", "fragment"), [
    (["--metric", "pose:unti=rad"], "unknown setting 'unti' for metric 'pose'; did you mean 'unit'?"),
    (["--method-option", "source.foo=1"], "unknown setting 'foo' for method 'source'"),
])
def test_misspelt_option_keys_are_one_line_errors(tmp_path, args, fragment):
    proc = cli("run", "-p", "demo", "--num-pairs", "2", "-m", "source", "--out", str(tmp_path / "o"), "--no-mlflow",
               "--device", "cpu", *args)
    one_line_error(proc, fragment)
    assert not (tmp_path / "o" / "runs").exists()  # refused before any swap


def test_misspelt_celebahq_option_is_a_one_line_error(tmp_path):
    proc = cli("run", "-p", "celebahq", "--root", str(tmp_path), "--option", "num_pair=2", "-m", "source",
               "--out", str(tmp_path / "o"), "--no-mlflow", "--device", "cpu")
    one_line_error(proc, "unknown setting 'num_pair' for protocol 'celebahq'; did you mean 'num_pairs'?")


def test_unknown_folder_option_is_a_one_line_error(tmp_path):
    root = bi.photo_folder(tmp_path / "photos", 3)
    proc = cli("run", "-p", "folder", "--root", str(root), "--option", "resolutoin=128", "-m", "source",
               "--out", str(tmp_path / "o"), "--no-mlflow", "--device", "cpu")
    one_line_error(proc, "unknown setting 'resolutoin' for protocol 'folder'; did you mean 'resolution'?")


# -- item 11: other silent acceptance --------------------------------------------------------
def test_tiny_precomputed_outputs_are_noted(tmp_path):
    from methods.precomputed import PrecomputedMethod
    from protocols.demo import DemoProtocol

    ps = DemoProtocol(num_pairs=3).build()
    folder = bi.precomputed_outputs(tmp_path / "outs", [p.pair_id for p in ps.pairs], "tiny")
    notes = PrecomputedMethod(dir=folder).prepare(ps)
    assert any("3 of 3 outputs are smaller than the protocol's 256px crops (smallest 4x4" in n for n in notes)


@pytest.mark.parametrize("value", ["../outside.txt", "/etc/hostname"])
def test_identity_file_must_stay_inside_the_dataset_root(tmp_path, value):
    from protocols.celebahq import CelebAHQProtocol

    root = tmp_path / "celebahq"
    root.mkdir()
    (tmp_path / "outside.txt").write_text("secret line\n")
    with pytest.raises(HarnessError, match="identity_file") as info:
        CelebAHQProtocol(root=root, cache_dir=tmp_path / "c", identity_file=value).validate()
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("value", ["../splits", "/tmp"])
def test_splits_dir_must_stay_inside_the_dataset_root(tmp_path, value):
    from protocols.ffpp import FFppProtocol

    root = tmp_path / "ffpp"
    root.mkdir()
    with pytest.raises(HarnessError, match="splits_dir"):
        FFppProtocol(root=root, cache_dir=tmp_path / "c", splits_dir=value)._splits_path()


# -- items 1 and 12: MLflow under concurrency and kills --------------------------------------
_TRACK = """
import sys, time
from pathlib import Path
out, go, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
from faceeval.tracking import Tracker
import mlflow  # imported before the barrier, so both processes reach the store at once
while not go.exists():
    time.sleep(0.01)
t = Tracker(out)
with t.parent(name, {"who": name}):
    pass
print("ok")
"""


def test_two_processes_creating_the_mlflow_store_at_once(tmp_path):
    out, go = tmp_path / "o", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": PYPATH, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _TRACK, str(out), str(go), f"p{i}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    time.sleep(8)  # both have imported mlflow and wait at the barrier
    go.touch()
    results = [p.communicate(timeout=HANG_GUARD_S) for p in procs]
    for p, (so, se) in zip(procs, results):
        assert p.returncode == 0 and so.strip() == "ok", se[-2000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("codeswap-harness")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["p0", "p1"]
    assert all(r.info.status == "FINISHED" for r in runs)


def _summary(tmp_path: Path, run_id: str = "abc"):
    from faceeval.summaries import RunSummary

    run_dir = tmp_path / "runs" / "demo" / f"source-{run_id}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text("{}")
    return RunSummary.from_dict({"run_id": run_id, "protocol": "demo", "protocol_version": "1", "manifest_sha256": "m",
            "gallery_sha256": "g", "seed": 0, "num_pairs": 2, "resolution": 256, "method": "source",
            "method_key": "k", "device": "cpu", "environment": {"git_commit": "x", "python": "3", "packages": {}},
            "protocol_settings": {}, "method_info": {}, "backends": {},
            "metrics": {"m": {"label": "m", "higher_is_better": True, "unit": "", "value": 1.0}},
            "swaps": {"computed": 0, "cached": 2}, "finished": "", "run_dir": str(run_dir)})


_KILLED = """
import os, sys
from pathlib import Path
sys.path[:0] = [sys.argv[2], sys.argv[2] + "/tests", sys.argv[2] + "/tests/harness"]
from test_bad_inputs import _summary
from faceeval.tracking import Tracker
out = Path(sys.argv[1])
t = Tracker(out)
with t.parent("demo: source", {"protocol": "demo", "methods": "source"}):
    import mlflow
    with mlflow.start_run(run_name="demo/source", nested=True, tags={"harness_run_id": "abc"}):
        mlflow.set_tags(t._owner_tags())
        os.kill(os.getpid(), 9)  # killed inside MLflow logging
"""


def test_killed_runs_are_marked_and_the_rerun_reuses_them(tmp_path):
    from mlflow.tracking import MlflowClient

    from faceeval.tracking import Tracker

    env = {**os.environ, "PYTHONPATH": PYPATH, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _KILLED, str(tmp_path), str(REPO)], env=env, capture_output=True)
    assert proc.returncode == -9
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("codeswap-harness")
    assert {r.info.status for r in client.search_runs([exp.experiment_id])} == {"RUNNING"}

    t = Tracker(tmp_path)
    with t.parent("demo: source", {"protocol": "demo", "methods": "source"}) as parent_id:
        killed = {r.info.run_id: r.info.status for r in client.search_runs([exp.experiment_id])}
        t.log_method(_summary(tmp_path))
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2, [(r.info.run_name, r.info.status) for r in runs]  # no duplicate parent or child
    assert parent_id in killed
    assert all(r.info.status == "FINISHED" for r in runs)
    child = next(r for r in runs if r.info.run_id != parent_id)
    assert child.data.tags["mlflow.parentRunId"] == parent_id and child.data.metrics["m"] == 1.0


def test_an_error_inside_a_run_marks_it_failed(tmp_path):
    from mlflow.tracking import MlflowClient

    from faceeval.tracking import Tracker

    t = Tracker(tmp_path)
    with pytest.raises(HarnessError):
        with t.parent("p", {"a": 1}):
            raise HarnessError("boom")
    client = MlflowClient(tracking_uri=t.uri)
    exp = client.get_experiment_by_name("codeswap-harness")
    assert [r.info.status for r in client.search_runs([exp.experiment_id])] == ["FAILED"]
