"""The built-in metrics, declared beside them: ``register(METRICS)`` adds one entry per metric
(a metric class with its bound settings) to the application's metric registry
(``harness.registry``). Entries are ``"module:Object"`` strings and weight-file names from
the backends' tables: listing metrics imports no backend.
"""

from __future__ import annotations

from faceeval.faces.pose import MEAN_FACE_FILE
from faceeval.fetch import requires as fetch_requires
from faceeval.metrics.expression import DEEP3D_FILE
from faceeval.metrics.id_backends import BACKEND_FILES as ID_BACKEND_FILES
from faceeval.metrics.id_backends import FACENET_GRAPH
from faceeval.metrics.pose import HOPENET_FILE
from faceeval.registry import Registry


def register(metrics: Registry) -> None:
    """Add the built-in metrics to ``metrics``."""
    _register_identity(metrics)
    _register_pose_expression_fid(metrics)
    _register_default_suite(metrics)


def _register_identity(metrics: Registry) -> None:
    """The identity metrics of the dlib, FaceNet, ArcFace and CosFace embedders."""
    # identity metrics: (name, backend setting, description, aliases); weight files from the backends' table
    for name, backend, what, aka in (
        ("identity", "dlib",
         "ID similarity and ID retrieval top-1/top-5 (dlib ResNet-128, offline)", ("id", "id_dlib")),
        ("identity_facenet", "facenet", "ID similarity/retrieval with FaceNet CASIA (PyTorch port, offline)", ()),
        ("identity_arcface", "arcface",
         "ID similarity/retrieval with ArcFace w600k_r50 (insightface buffalo_l ONNX)", ()),
        ("identity_arcface_glint", "arcface_glint",
         "ID similarity/retrieval with ArcFace glintr100 (insightface antelopev2 ONNX)", ()),
        ("identity_arcface_r100", "arcface_r100",
         "ID similarity/retrieval with arcface_torch ArcFace iresnet-100 MS1MV3", ()),
        ("identity_cosface", "cosface",
         "ID similarity/retrieval with CosFace iresnet-100 Glint360K (arcface_torch)", ()),
        ("identity_cosface_r50", "cosface_r50",
         "ID similarity/retrieval with CosFace iresnet-50 Glint360K (FaceDancer's evaluator)", ()),
        ("identity_arcface_irse50", "arcface_irse50",
         "ID similarity/retrieval with ArcFace IR-SE-50 (pSp's model_ir_se50.pth; REFace's evaluator)", ()),
        ("identity_cosface_sphere20", "cosface_sphere20",
         "ID similarity/retrieval with CosFace sphere20 VGGFace2 (ReliableSwap's evaluator)", ()),
    ):
        metrics.register(name, "faceeval.metrics.identity:IdentityMetric", description=what, aliases=aka,
                         options={} if backend == "dlib" else {"backend": backend}, requires=ID_BACKEND_FILES[backend])


def _register_pose_expression_fid(metrics: Registry) -> None:
    """The pose, expression and FID metrics outside the default suite."""
    metrics.register("pose", "faceeval.metrics.pose:PoseMetric",
                     description="pose error, L2 of (yaw, pitch, roll) vs target: dlib-68 + mean face + solvePnP "
                                 "(offline), degrees",
                     aliases=("pose_pnp",), options={"backend": "pnp", "unit": "deg"}, requires=(MEAN_FACE_FILE,))
    metrics.register("pose_rad", "faceeval.metrics.pose:PoseMetric",
                     description="as pose, in radians", options={"backend": "pnp", "unit": "rad"},
                     requires=(MEAN_FACE_FILE,))
    metrics.register("pose_hopenet", "faceeval.metrics.pose:PoseMetric",
                     description=f"pose error with Hopenet ResNet-50 ({HOPENET_FILE}), degrees",
                     options={"backend": "hopenet", "unit": "deg"}, requires=(HOPENET_FILE,))
    metrics.register("pose_hopenet_rad", "faceeval.metrics.pose:PoseMetric",
                     description="as pose_hopenet, in radians", options={"backend": "hopenet", "unit": "rad"},
                     requires=(HOPENET_FILE,))
    metrics.register("expression", "faceeval.metrics.expression:ExpressionMetric",
                     description="expression error vs target: Procrustes-aligned inner-face dlib landmarks, "
                                 "% inter-ocular (offline)",
                     options={"backend": "landmarks"})
    metrics.register("expression_deep3d", "faceeval.metrics.expression:ExpressionMetric",
                     description="expression error: L2 of Deep3DFaceRecon's 64 expression coefficients vs target",
                     options={"backend": "deep3d"}, requires=(DEEP3D_FILE,))
    metrics.register("fid_facenet", "faceeval.metrics.fid:FIDMetric",
                     description="Frechet distance in FaceNet feature space vs the targets "
                                 "(offline; not Inception FID)",
                     options={"backend": "facenet"}, requires=(FACENET_GRAPH,))
    metrics.register("fid", "faceeval.metrics.fid:FIDMetric",
                     description="FID: Inception-v3 (TF 2015-12-05) pool3 at 299 through torch-fidelity, "
                                 "vs the targets "
                                 "(torch-fidelity's weight file, else `harness weights fetch fid_inception`)",
                     options={"backend": "inception"},
                     requires=("weights-inception-2015-12-05-6726825d.pth|" + fetch_requires("fid_inception")[0],))


def _register_default_suite(metrics: Registry) -> None:
    """The default suite's metrics: SFace identity, WHENet pose, MediaPipe blendshape expression."""
    metrics.register("identity_sface", "faceeval.metrics.identity:IdentityMetric",
                     description="ID similarity and retrieval top-1/top-5 with SFace "
                                 "(ArcFace-family hypersphere loss, 128-d), "
                                 "RetinaFace 5-point ArcFace crop (default suite)",
                     aliases=("id_sface",), options={"backend": "sface"}, requires=ID_BACKEND_FILES["sface"])
    metrics.register("pose_whenet", "faceeval.metrics.pose:PoseMetric",
                     description="pose error, L2 of (yaw, pitch, roll) vs target: WHENet on timm tf_efficientnet_b0, "
                                 "RetinaFace box, degrees (default suite)",
                     options={"backend": "whenet", "unit": "deg"}, requires=fetch_requires("whenet", "retinaface"))
    metrics.register("expression_blendshapes", "faceeval.metrics.expression:ExpressionMetric",
                     description="expression error vs target: L2 of MediaPipe's 52 blendshape scores (default suite)",
                     options={"backend": "blendshapes"}, requires=fetch_requires("face_landmarker", "retinaface"))
