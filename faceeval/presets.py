"""Convention presets: ``--convention NAME`` sets every evaluation choice (:mod:`faceeval.conventions`)
to what one codebase does, each choice cited to the file and line it was read from (``NOTE:``
where the source is silent and the harness's default is kept).

A preset names, per quantity, the network the codebase used (:class:`Role`). Its weight files
missing (or a network this harness has no loader for) is a one-line error naming the files and
where to get them; with ``allow_substitute`` the default suite's network of the same kind runs
instead (SFace for a CosFace/ArcFace recogniser, WHENet for Hopenet, MediaPipe blendshapes for
Deep3DFaceRecon), keeping the preset's settings, and every table says what was substituted.

Example:
    >>> sorted(PRESETS)
    ['codeswap', 'facedancer', 'reface', 'reliableswap']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from faceeval.errors import HarnessError
from faceeval.metrics.expression import DEEP3D_FILE
from faceeval.metrics.pose import HOPENET_FILE

RELIABLESWAP = "ygtxr1997/ReliableSwap@a9fdce66 inference/ffplus/eval.py"
RELIABLESWAP_DATA = "ygtxr1997/ReliableSwap@a9fdce66 inference/ffplus/dataloader.py"
REFACE_ID = "Sanoojan/REFace@64615dc8 eval_tool/ID_retrieval/ID_retrieval.py"
REFACE_POSE = "Sanoojan/REFace@64615dc8 eval_tool/Pose/pose_compare.py"
REFACE_EXPR = "Sanoojan/REFace@64615dc8 eval_tool/Expression/expression_compare_face_recon.py"
FACEDANCER = "felixrosberg/FaceDancer@788f5e8a test/identity_retrieval.py"
PAPER = "CodeSwap paper (Luo et al., ACM MM 2024) §4.3.1, /work/shared/paper/codeswap-paper.txt"
PARSER_FILE = "79999_iter.pth"  # faceeval.models.bisenet.WEIGHTS (named here without importing torch)


@dataclass(frozen=True)
class Role:
    """One network a preset uses and the convention settings it is scored under."""

    kind: str  # identity, pose, expression, fid
    metric: str | None  # the registered metric that runs this network; None: no loader in this harness
    network: str  # in words, for messages and tables
    files: tuple[str, ...]  # weight files it needs (faceeval.weights names)
    get: str  # where to get them
    substitute: str  # the default suite's metric of the same kind
    settings: tuple[tuple[str, str], ...] = ()  # convention settings (metric options)
    cite: tuple[str, ...] = ()  # "file line N: what it says" for each setting and the network


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    roles: tuple[Role, ...]
    protocol: tuple[tuple[str, str, str], ...] = ()  # (protocol, setting, value)
    cite: tuple[str, ...] = ()  # sources of the protocol settings, NOTEs


_HOPENET = (HOPENET_FILE,)
_HOPENET_GET = "Hopenet's release (natanielruiz/deep-head-pose README: hopenet_robust_alpha1.pkl)"
_DEEP3D = (DEEP3D_FILE,)
_DEEP3D_GET = ("Deep3DFaceRecon_pytorch's release (checkpoints/<name>/epoch_20.pth), "
               "renamed deep3dfacerecon_epoch_20.pth")
_FID = Role("fid", "fid", "Inception-v3 (TF 2015-12-05)", (), "`harness weights fetch fid_inception`", "fid")

PRESETS: dict[str, Preset] = {
    "reliableswap": Preset(
        "reliableswap", "ReliableSwap's evaluation (inference/ffplus/eval.py)",
        roles=(
            Role("identity", "identity_cosface_sphere20", "CosFace sphere20 trained on VGGFace2",
                 ("net_sphere20_data_vggface2_acc_9955.pth",),
                 "ReliableSwap's environment_preparation.md, third-party weights folder cosface/", "identity_sface",
                 (("crop", "resize"), ("mask", "none"), ("gallery", "every_frame"), ("score", "cosine")),
                 (f"{RELIABLESWAP} lines 120-121: cosface.net.sphere(), net_sphere20_data_vggface2_acc_9955.pth",
                  f"{RELIABLESWAP} line 212: the whole aligned crop interpolated to 112 (crop=resize), bilinear, "
                  "align_corners=True (the cosface_sphere20 backend resizes so)",
                  "ygtxr1997/ReliableSwap@a9fdce66 modules/third_party/cosface/net.py line 37: fc for (112,112) "
                  "input (112x112, not sphere nets' usual 112x96); inference/ffplus/dataloader.py lines 168-172 "
                  "and 195: RGB, ToTensor, Normalize(0.5, 0.5)",
                  f"{RELIABLESWAP} lines 208-219 (_record_id_batch): no mask before the recogniser (mask=none)",
                  f"{RELIABLESWAP} line 358: pairwise_distances(result, every source frame, metric='cosine'); "
                  "lines 362-366: index // 10 = video (gallery=every_frame, score=cosine)")),
            Role("pose", "pose_hopenet", "Hopenet ResNet-50 (300W-LP, robust alpha 1)", _HOPENET, _HOPENET_GET,
                 "pose_whenet", (("formula", "hopenet_bins"),),
                 (f"{RELIABLESWAP} lines 250-266: raw 66-bin logits of yaw, pitch, roll kept",
                  f"{RELIABLESWAP} lines 445-456: per angle _calc_mse_l2, the three averaged; lines 480-486: "
                  "sqrt(MSE * dim) / 2 (formula=hopenet_bins)")),
            Role("expression", "expression_deep3d", "Deep3DFaceRecon ResNet-50, 64 expression coefficients", _DEEP3D,
                 _DEEP3D_GET, "expression_blendshapes", (("formula", "sqrt_mse_dim"),),
                 (f"{RELIABLESWAP} lines 458-468: mse_loss(exp_t, exp_r, 'mean') over the whole set, "
                  "sqrt(MSE * exp_dim) (formula=sqrt_mse_dim)",)),
            Role("fid", "fid", _FID.network, (), _FID.get, "fid", (("reference", "targets"),),
                 (f"NOTE: {RELIABLESWAP} computes no FID; the harness's reference set (targets) is kept",)),
        ),
        protocol=(("ffpp", "sampling", "even"), ("ffpp", "compression", "c23")),
        cite=(f"{RELIABLESWAP_DATA} lines 44-46: step = ceil(n / 10), frames[::step] (sampling=even; the harness "
              "takes floor(i * n / 10), the same frames up to rounding)",
              f"{RELIABLESWAP_DATA} line 18: .../original_sequences/youtube/c23/ (compression=c23)"),
    ),
    "reface": Preset(
        "reface", "REFace's evaluation (eval_tool/)",
        roles=(
            Role("identity", "identity_arcface_irse50", "ArcFace IR-SE50 (pSp's model_ir_se50.pth)",
                 ("model_ir_se50.pth",),
                 "pSp's README ('IR-SE50 Model') or REFace's README (Other_dependencies/arcface/model_ir_se50.pth)",
                 "identity_sface",
                 (("crop", "psp"), ("mask", "parsing"), ("gallery", "one_per_identity"), ("score", "dot")),
                 (f"{REFACE_ID} lines 111-113: Backbone(112, 50, mode='ir_se'), model_ir_se50.pth",
                  f"{REFACE_ID} lines 194-196, 142-150 and 226: RGB, ToTensor, Normalize(0.5, 0.5): the "
                  "network sees [-1, 1] (faceeval.models.irse)",
                  f"{REFACE_ID} lines 129-131: resize to 256, x[:, :, 35:223, 32:220], resize to 112 (crop=psp)",
                  f"{REFACE_ID} line 64 (--mask default True) and lines 204-227: face-parsing classes kept "
                  "(ff++: 1, 2, 4, 5, 8, 9), the rest zeroed (mask=parsing; the harness keeps BiSeNet's face classes)",
                  f"{REFACE_ID} lines 358-367: top-1/top-5 by np.dot(swap, source features) (score=dot), one "
                  "feature per source image (gallery=one_per_identity); lines 373-376: ID similarity by cosine")),
            Role("pose", "pose_hopenet", "Hopenet ResNet-50 (300W-LP, robust alpha 1)", _HOPENET, _HOPENET_GET,
                 "pose_whenet", (("formula", "l2_3angles"),),
                 (f"{REFACE_POSE} line 306: hopenet_robust_alpha1.pkl; line 91: resized to 224; line 106: "
                  "softmax expectation * 3 - 99 (degrees)",
                  f"{REFACE_POSE} lines 322-323: mean over pairs of the L2 of (yaw, pitch, roll) "
                  "(formula=l2_3angles)")),
            Role("expression", "expression_deep3d", "Deep3DFaceRecon ResNet-50, 64 expression coefficients", _DEEP3D,
                 _DEEP3D_GET, "expression_blendshapes", (("formula", "l2"),),
                 (f"{REFACE_EXPR} line 197: coeff['exp']; lines 369-375: sqrt of the summed squares per pair, "
                  "then the mean (formula=l2)",)),
            Role("fid", "fid", _FID.network, (), _FID.get, "fid", (("reference", "targets"),),
                 ("Sanoojan/REFace@64615dc8 evaluate_all.sh lines 50-53 and 31: "
                  "eval_tool/fid/fid_score.py (pytorch-fid, "
                  "InceptionV3 pool3, 2048-d: the same TF 2015-12-05 network) between the swaps and the whole "
                  "dataset folder (FFHQ images512)",
                  "NOTE: the harness has no whole-dataset reference set; its nearest, the targets (reference=targets), "
                  "is kept")),
        ),
        cite=("NOTE: REFace's eval_tool/ reads folders of frames already chosen; frame sampling and the FF++ "
              "compression are the harness's defaults (random, c23)",),
    ),
    "facedancer": Preset(
        "facedancer", "FaceDancer's identity retrieval (test/identity_retrieval.py)",
        roles=(
            Role("identity", "identity_cosface_r50", "CosFace iresnet-50 trained on Glint360K",
                 ("cosface_r50_glint360k.pth",),
                 "insightface arcface_torch model zoo (glint360k_cosface_r50/backbone.pth), renamed "
                 "cosface_r50_glint360k.pth", "identity_sface",
                 (("crop", "resize"), ("mask", "none"), ("gallery", "every_frame"), ("score", "cosine")),
                 (f"{FACEDANCER} lines 8, 33-34 and 120: iresnet50, glint360k_cosface_r50/backbone.pth",
                  f"{FACEDANCER} line 30: transforms.Resize(112) of the whole image (crop=resize)",
                  f"{FACEDANCER} lines 115-117: --mode default 'spread', one vector per image (gallery=every_frame; "
                  "'centers', lines 41-42, is gallery=identity_mean)",
                  f"{FACEDANCER} lines 13-19: nearest by cosine (score=cosine); no mask anywhere (mask=none)")),
            Role("pose", "pose_whenet", "WHENet (the default suite)", (), "`harness weights fetch whenet retinaface`",
                 "pose_whenet", (("formula", "l2_3angles"),),
                 (f"NOTE: {FACEDANCER} scores identity only; pose is the harness's default",)),
            Role("expression", "expression_blendshapes", "MediaPipe blendshapes (the default suite)", (),
                 "`harness weights fetch face_landmarker retinaface`", "expression_blendshapes", (("formula", "l2"),),
                 (f"NOTE: {FACEDANCER} scores identity only; expression is the harness's default",)),
            Role("fid", "fid", _FID.network, (), _FID.get, "fid", (("reference", "targets"),),
                 (f"NOTE: {FACEDANCER} computes no FID; the harness's reference set (targets) is kept",)),
        ),
        protocol=(("ffpp", "sampling", "random"),),
        cite=("NOTE: test/identity_retrieval.py reads frames already extracted; 10 random frames per video is "
              "FaceDancer's paper's account, not this file's (sampling=random); compression: the harness's c23",),
    ),
    "codeswap": Preset(
        "codeswap", "the CodeSwap paper's own account (§4.3.1)",
        roles=(
            Role("identity", "identity_sface", "SFace (the default suite)", (),
                 "`harness weights fetch sface retinaface`",
                 "identity_sface", (("crop", "model"), ("mask", "none"), ("gallery", "one_per_identity"),
                                    ("score", "cosine")),
                 (f"{PAPER} lines 470-472: 'a specialized face recognition model [41] ... employing cosine similarity' "
                  "(score=cosine); NOTE: the extracted text has no reference list, so [41] is unnamed: the default "
                  "suite's recogniser and its crop are kept",
                  f"{PAPER} lines 472-475: CelebA-HQ within the selected subset, FF++ 'a single frame from each "
                  "video instead of all frames' (gallery=one_per_identity); NOTE: silent on masking (mask=none)")),
            Role("pose", "pose_whenet", "WHENet (the default suite)", (), "`harness weights fetch whenet retinaface`",
                 "pose_whenet", (("formula", "l2_3angles"),),
                 (f"{PAPER} lines 475-477: 'the Euclidean distance between estimated and ground truth poses [34]' "
                  "(formula=l2_3angles; NOTE: which angles and which estimator [34] is are not said)",)),
            Role("expression", "expression_blendshapes", "MediaPipe blendshapes (the default suite)", (),
                 "`harness weights fetch face_landmarker retinaface`", "expression_blendshapes", (("formula", "l2"),),
                 (f"{PAPER} lines 477-480: 'the L2 distance between expression embeddings' of a model [40] "
                  "(formula=l2; NOTE: [40] unnamed in the extracted text)",)),
            Role("fid", "fid", _FID.network, (), _FID.get, "fid", (("reference", "targets"),),
                 (f"{PAPER} lines 468-470: FID [14]; NOTE: the reference set is not said (targets kept)",)),
        ),
        protocol=(("ffpp", "sampling", "random"), ("ffpp", "compression", "c23")),
        cite=(f"{PAPER} lines 462-464: '10 random frames from each video' (sampling=random); NOTE: the "
              "compression is not said (c23 kept)",),
    ),
}


def preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is a one-line error with a did-you-mean."""
    from faceeval.options import suggest

    if name not in PRESETS:
        raise HarnessError(f"unknown convention {name!r}{suggest(name, PRESETS)} (known: {', '.join(PRESETS)})")
    return PRESETS[name]


def _missing(files: tuple[str, ...]) -> list[str]:
    from faceeval.weights import locate

    out = []
    for f in files:
        try:
            locate(f)
        except HarnessError:
            out.append(f)
    return out


@dataclass(frozen=True)
class Resolved:
    """What a preset runs here: metric specs, protocol options, and each substitution in words."""

    name: str
    metrics: dict[str, dict[str, str]]
    options: dict[str, dict[str, str]]  # protocol -> settings
    substitutions: tuple[str, ...]


def resolve(name: str, allow_substitute: bool = False) -> Resolved:
    """``name``'s metrics and protocol settings on this machine. Networks whose files are
    missing (or that this harness cannot load) are an error naming every file and where to
    get it, unless ``allow_substitute``: then the default suite's network of the same kind
    runs with the preset's settings, and the substitution is returned in words."""
    p = preset(name)
    metrics: dict[str, dict[str, str]] = {}
    missing, subs = [], []
    for role in p.roles:
        settings = dict(role.settings)
        absent = _missing(role.files) if role.metric is not None else list(role.files)
        chosen = role.metric
        if absent:
            missing.append(f"{role.kind}: {role.network} ({', '.join(absent)}; from {role.get})")
            if allow_substitute:
                chosen = role.substitute
                subs.append(f"{role.kind}: {role.network} ({', '.join(absent)}) substituted by {role.substitute}")
        if settings.get("mask") == "parsing" and _missing((PARSER_FILE,)):
            missing.append(f"{role.kind} mask: BiSeNet face parsing ({PARSER_FILE}; from face-parsing.PyTorch's "
                           "release, res/cp/79999_iter.pth)")
            if allow_substitute:
                settings["mask"] = "none"
                subs.append(f"{role.kind}: face-parsing mask ({PARSER_FILE}) not applied (no other face parser "
                            "here): mask=none")
        if chosen is not None:
            metrics[chosen] = settings
    if missing and not allow_substitute:
        raise HarnessError(f"convention {name} needs networks that are not here: {'; '.join(missing)}; put the files "
                           "in the weights folder (`harness weights` lists where), or pass --allow-substitute to run "
                           "the default suite's network of each kind (every table then says so)")
    options: dict[str, dict[str, str]] = {}
    for protocol, key, value in p.protocol:
        options.setdefault(protocol, {})[key] = value
    return Resolved(name, metrics, options, tuple(subs))


def table_rows() -> list[dict[str, Any]]:
    """One row per preset and setting, for docs/conventions.md and ``harness list conventions``."""
    rows = []
    for p in PRESETS.values():
        for role in p.roles:
            rows.append({"preset": p.name, "quantity": role.kind, "network": role.network,
                         "settings": ", ".join(f"{k}={v}" for k, v in role.settings), "sources": list(role.cite)})
        for protocol, key, value in p.protocol:
            rows.append({"preset": p.name, "quantity": f"{protocol} protocol", "network": "",
                         "settings": f"{key}={value}", "sources": list(p.cite)})
    return rows
