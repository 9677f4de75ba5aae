"""Pose (PnP and Hopenet) and expression (landmarks and Deep3DFaceRecon): known angles,
sign conventions, and the official checkpoint formats."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from faceeval.faces.pose import camera_matrix, camera_rotation, mean_face_68, pnp_pose


def _project(angles, size=256, noise=0.0, seed=0):
    model, _ = mean_face_68()
    rvec, _ = cv2.Rodrigues(camera_rotation(*angles, model))
    tvec = np.array([3.0, -4.0, size * np.ptp(model[:, 0]) / (0.45 * size)])  # face ~45 % of the crop wide
    pts, _ = cv2.projectPoints(model, rvec, tvec, camera_matrix(size, size), None)
    pts = pts.reshape(-1, 2)
    return pts + np.random.default_rng(seed).normal(0, noise, pts.shape)


def test_pnp_recovers_known_angles_within_one_degree():
    rng = np.random.default_rng(0)
    for i in range(40):
        angles = rng.uniform([-45, -25, -25], [45, 25, 25])
        est = pnp_pose(_project(angles, noise=0.2, seed=i), 256, 256)  # 0.2 px landmark noise
        assert np.abs(est - angles).max() < 1.0, (angles, est)


def test_pnp_sign_convention_is_hopenets():
    # yaw > 0: nose towards the image's left; pitch > 0: nose up; roll > 0: eye line down to the right
    frontal = _project((0, 0, 0))
    yawed, pitched, rolled = _project((25, 0, 0)), _project((0, 20, 0)), _project((0, 0, 20))
    assert yawed[30, 0] - yawed[27, 0] < frontal[30, 0] - frontal[27, 0] - 5
    def nose_above_face_plane(p):  # nose tip height relative to eyes and mouth corners (y grows down)
        return p[30, 1] - p[[36, 45, 48, 54], 1].mean()

    assert nose_above_face_plane(pitched) < nose_above_face_plane(frontal) - 3
    assert rolled[45, 1] - rolled[36, 1] > 10


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HARNESS_SHA_MEMO", str(tmp_path / "sha.json"))
    return tmp_path


def _torchvision_resnet50_state():
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None).eval()
    return net, {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}


def test_hopenet_official_state_dict_loads_and_decodes_degrees(weights_dir):
    from faceeval.models.hopenet import NUM_BINS, load_hopenet

    trunk, state = _torchvision_resnet50_state()
    heads = {}
    for h in ("fc_yaw", "fc_pitch", "fc_roll"):
        heads[h] = torch.nn.Linear(2048, NUM_BINS)
        state[f"{h}.weight"], state[f"{h}.bias"] = heads[h].weight.detach(), heads[h].bias.detach()
    state["fc_finetune.weight"], state["fc_finetune.bias"] = torch.zeros(3, 2051), torch.zeros(3)
    path = weights_dir / "hopenet_robust_alpha1.pkl"
    torch.save(state, path)  # the official file is a torch.save'd state dict of these keys
    model = load_hopenet(path)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        got = model(x)
        trunk.fc = torch.nn.Identity()
        feat = trunk(x)  # (2, 2048)
        idx = torch.arange(NUM_BINS, dtype=torch.float32)
        want = torch.stack([(torch.softmax(heads[h](feat), 1) * idx).sum(1) * 3 - 99
                            for h in ("fc_yaw", "fc_pitch", "fc_roll")], 1)
    assert torch.allclose(got, want, atol=1e-3)


def test_deep3d_official_checkpoint_loads(weights_dir):
    from faceeval.models.deep3d import HEAD_SIZES, load_deep3d

    trunk, state = _torchvision_resnet50_state()
    ckpt = {f"backbone.{k}": v for k, v in state.items()}
    heads = [torch.nn.Conv2d(2048, n, 1) for n in HEAD_SIZES]
    for i, h in enumerate(heads):
        ckpt[f"final_layers.{i}.weight"], ckpt[f"final_layers.{i}.bias"] = h.weight.detach(), h.bias.detach()
    path = weights_dir / "deep3dfacerecon_epoch_20.pth"
    torch.save({"net_recon": ckpt, "epoch": 20}, path)
    model = load_deep3d(path)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        trunk.fc = torch.nn.Identity()
        feat = trunk(x)[:, :, None, None]
        want = torch.cat([h(feat) for h in heads], 1).flatten(1)
        got = model(x)
        assert got.shape == (2, 257)
        assert torch.allclose(got, want, atol=1e-4)
        assert torch.allclose(model.expression(x), want[:, 80:144], atol=1e-4)


def test_landmark_expression_distance_properties():
    from faceeval.metrics.expression import procrustes_distance

    a = _project((10, 5, 0))
    ang = np.deg2rad(15)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    moved = (a - a.mean(0)) @ rot.T * 1.3 + [7, -3]  # same shape, other place/scale/roll
    assert procrustes_distance(moved, a) < 1e-9
    opened = a.copy()
    opened[57] += [0, 8]  # lower lip down: an expression change
    opened[66] += [0, 8]
    assert procrustes_distance(opened, a) > 0.01


def test_faces_not_found_are_counted():
    from faceeval.api import FacePair
    from faceeval.faces.landmarks import CropLandmarks
    from faceeval.images import load_rgb
    from metrics_helpers import fake_context
    from protocols.demo import DEMO_DIR

    face = load_rgb(DEMO_DIR / "astronaut.png")
    blank = np.full_like(face, 128)
    ctx = fake_context([FacePair("p", "face", "blank", "a", "b")], {"face": face, "blank": blank})
    lm = CropLandmarks()
    pts, five, found = lm(ctx, [ctx.image_sha("face"), ctx.image_sha("blank")], [face, blank])
    assert found.tolist() == [True, False] and pts.shape == (2, 68, 2) and five.shape == (2, 5, 2)
    from faceeval.faces.landmarks import five_from_68

    assert np.allclose(five, five_from_68(pts), atol=1e-3)  # dlib: the 5 points come from the 68
    note = lm.stats.note("pose")
    assert note is not None and "1 of 2" in note


def _demo_batch():
    from faceeval.api import EvalBatch, FacePair
    from faceeval.images import load_rgb
    from metrics_helpers import fake_context
    from protocols.demo import DEMO_DIR

    a, b = (load_rgb(DEMO_DIR / n) for n in ("astronaut.png", "grace_hopper.png"))
    ctx = fake_context([FacePair("p0", "a", "b", "A", "B"), FacePair("p1", "b", "a", "B", "A")], {"a": a, "b": b})
    sa, sb = ctx.image_sha("a"), ctx.image_sha("b")
    # pair 0: "swap" = the target itself (error 0); pair 1: "swap" = the other face
    return ctx, EvalBatch(["p0", "p1"], np.stack([a, b]), np.stack([b, a]), np.stack([b, b]), [sa, sb], [sb, sa],
                          [sb, sb])


def test_standard_pose_and_expression_metrics_run_from_official_files(weights_dir):
    from faceeval.metrics.expression import ExpressionMetric
    from faceeval.metrics.pose import PoseMetric

    test_hopenet_official_state_dict_loads_and_decodes_degrees(weights_dir)
    test_deep3d_official_checkpoint_loads(weights_dir)
    ctx, batch = _demo_batch()
    for metric in (PoseMetric("cpu", "hopenet", "rad"), ExpressionMetric("cpu", "deep3d")):
        b = metric.backend()
        assert b.standard and all(len(sha) == 64 for _, sha in b.weights)
        key = metric.keys[0].key
        assert key in ("pose_error", "expression_error")  # the standard models carry the plain names
        err = metric.update(batch, ctx)[key]
        assert err.shape == (2,) and err[0] == 0.0 and err[1] > 0.0
    assert PoseMetric("cpu", "hopenet", "rad").keys[0].unit == "rad"
