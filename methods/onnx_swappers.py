"""The ONNX face swappers people run (insightface's inswapper, the facefusion family).

Every model differs in a handful of conventions; they are declared once, in
:data:`SWAPPERS`, and one adapter (:class:`OnnxSwapper`) follows the table:

* ``template`` / ``size``: the 5-point template and side of the target crop it expects;
* ``mean`` / ``std``: target input normalisation, ``(rgb01 - mean) / std``;
* ``source``: how identity enters:
    - ``emap``:       ArcFace embedding, unit-normalised, through the model's own ``emap``
                      matrix (the graph's last initializer), normalised again (inswapper);
    - ``arcface``:    the unit-normalised ArcFace embedding as is (HyperSwap);
    - ``converter``:  ArcFace embedding through an embedding-converter ONNX (facefusion's
                      ``crossface_*.onnx``, input ``input`` (1, 512)), then unit-normalised
                      unless ``normalise_converted`` is False (GHOST uses it raw);
    - ``image``:      an RGB [0, 1] source crop on ``source_template`` / ``source_size``
                      (BlendSwap, UniFace);
* ``denormalise_output``: output is in the normalised space (``* std + mean``) rather than
  already in [0, 1];
* ``mask``: how the swapped crop is blended back. ``box``: a feathered box over the
  template crop (``faceeval.faces.paste``), what facefusion does by default; none of these
  graphs returns a mask that the tools use (occlusion / region masks come from separate
  face-parsing models there, which the harness does not ship).

Graph inputs are named ``source`` and ``target`` (facefusion's exports); inswapper's are
taken in graph order (target, source) through insightface's own ``INSwapper`` class.
Conventions are facts read from facefusion's ``face_swapper`` processor and insightface's
``inswapper.py``; the code here is this project's.

Pipeline per pair: 68 dlib landmarks on both harness crops -> 5 points -> similarity
warp of the target onto the model's template -> swap -> paste back into the harness crop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np

from faceeval.api import SwapMethod
from faceeval.constants import IMAGENET_MEAN, IMAGENET_STD
from faceeval.errors import HarnessError
from faceeval.images import to_uint8
from faceeval.options import parse_bool

HALF = (0.5, 0.5, 0.5)
ZERO = (0.0, 0.0, 0.0)
ONE = (1.0, 1.0, 1.0)

ARCFACE_FILE = "w600k_r50.onnx"
ARCFACE_TEMPLATE, ARCFACE_SIZE = "arcface_112_v2", 112


@dataclass(frozen=True)
class SwapperSpec:
    """The conventions of one ONNX swapper (see the module docstring)."""

    name: str  # registry name, also the facefusion model name
    file: str  # weight file name (faceeval.weights)
    template: str
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str  # "emap" | "arcface" | "converter" | "image"
    denormalise_output: bool
    converter: str | None = None  # embedding-converter ONNX file, for source == "converter"
    normalise_converted: bool = True
    source_template: str | None = None  # for source == "image"
    source_size: int | None = None
    mask: str = "box"  # paste-back mask (see the module docstring); the only kind so far
    licence: str = ""

    @property
    def weight_files(self) -> tuple[str, ...]:
        """Files this model cannot run without."""
        files = [self.file]
        if self.source != "image":
            files.append(ARCFACE_FILE)
        if self.converter:
            files.append(self.converter)
        return tuple(files)


_GHOST = dict(template="arcface_112_v1", size=256, mean=HALF, std=HALF, source="converter",
              converter="crossface_ghost.onnx", normalise_converted=False, denormalise_output=True,
              licence="Apache-2.0 (ai-forever/ghost)")
_HYPER = dict(template="arcface_128", size=256, mean=HALF, std=HALF, source="arcface", denormalise_output=True,
              licence="ResearchRAIL (FaceFusion)")

SWAPPERS: dict[str, SwapperSpec] = {s.name: s for s in (
    SwapperSpec("inswapper_128", "inswapper_128.onnx", "arcface_128", 128, ZERO, ONE, "emap", False,
                licence="non-commercial (insightface)"),
    SwapperSpec("simswap_256", "simswap_256.onnx", "arcface_112_v1", 256, IMAGENET_MEAN, IMAGENET_STD, "converter",
                False, converter="crossface_simswap.onnx", licence="non-commercial (neuralchen/SimSwap)"),
    SwapperSpec("simswap_unofficial_512", "simswap_unofficial_512.onnx", "arcface_112_v1", 512, ZERO, ONE,
                "converter", False, converter="crossface_simswap.onnx", licence="non-commercial"),
    SwapperSpec("blendswap_256", "blendswap_256.onnx", "ffhq_512", 256, ZERO, ONE, "image", False,
                source_template="arcface_112_v2", source_size=112, licence="non-commercial (mapooon/BlendFace)"),
    SwapperSpec("ghost_1_256", "ghost_1_256.onnx", **_GHOST),
    SwapperSpec("ghost_2_256", "ghost_2_256.onnx", **_GHOST),
    SwapperSpec("ghost_3_256", "ghost_3_256.onnx", **_GHOST),
    SwapperSpec("hififace_unofficial_256", "hififace_unofficial_256.onnx", "mtcnn_512", 256, HALF, HALF,
                "converter", True, converter="crossface_hififace.onnx", licence="unknown"),
    SwapperSpec("uniface_256", "uniface_256.onnx", "ffhq_512", 256, HALF, HALF, "image", True,
                source_template="ffhq_512", source_size=256, licence="unknown"),
    SwapperSpec("hyperswap_1a_256", "hyperswap_1a_256.onnx", **_HYPER),
    SwapperSpec("hyperswap_1b_256", "hyperswap_1b_256.onnx", **_HYPER),
    SwapperSpec("hyperswap_1c_256", "hyperswap_1c_256.onnx", **_HYPER),
)}


def providers_for(device: str) -> list[str]:
    """onnxruntime providers for a harness device string: CUDA first when asked and present,
    on the GPU the device names (``cuda:1`` under torchrun's rank 1 of a node)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise HarnessError(f"device {device}: onnxruntime has no CUDA provider (install onnxruntime-gpu)")
        return [("CUDAExecutionProvider", {"device_id": int(device.partition(":")[2] or 0)}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(path, device: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # unused-initializer warnings are noise here
    if not device.startswith("cuda"):
        opts.intra_op_num_threads = 1  # results must not depend on the thread count (faceeval.parallel)
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers_for(device))


def normalise_input(crop01: np.ndarray, mean, std) -> np.ndarray:
    """RGB float (S, S, 3) in [0, 1] -> model input (1, 3, S, S) float32: ``(x - mean) / std``."""
    x = (crop01 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)  # (1, 3, S, S)


def output_to_rgb01(output: np.ndarray, spec: SwapperSpec) -> np.ndarray:
    """Model output (1, 3, S, S) -> RGB float (S, S, 3) in [0, 1]."""
    y = np.asarray(output, np.float32)[0].transpose(1, 2, 0)  # (S, S, 3)
    if spec.denormalise_output:
        y = y * np.asarray(spec.std, np.float32) + np.asarray(spec.mean, np.float32)
    return np.clip(y, 0.0, 1.0)


def unit(v: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm."""
    v = np.asarray(v, np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def emap_latent(embedding: np.ndarray, emap: np.ndarray) -> np.ndarray:
    """inswapper's identity input: ``normalize(normalize(embedding) @ emap)``, (1, 512)."""
    return unit(unit(embedding.reshape(1, -1)) @ emap)


class ArcFaceOnnx:
    """insightface ArcFace recognition ONNX (``w600k_r50.onnx``): aligned crop -> raw 512-d.

    Runs through insightface's own ``ArcFaceONNX`` class, which picks the input
    normalisation from the graph (``(x - 127.5) / 127.5`` on 0..255 RGB for the buffalo_l
    models; none for old MXNet exports that normalise inside). Input: RGB on the
    ``arcface_112_v2`` template at 112 px, NCHW.
    """

    def __init__(self, path, device: str = "cpu") -> None:
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX

        self.model = ArcFaceONNX(model_file=str(path), session=_session(path, device))

    def __call__(self, crop01: np.ndarray) -> np.ndarray:
        """RGB float (112, 112, 3) in [0, 1] on the template -> (1, 512) raw embedding."""
        rgb255 = crop01.transpose(2, 0, 1)[None].astype(np.float32) * 255.0  # (1, 3, 112, 112)
        return np.asarray(self.model.forward(rgb255), np.float32).reshape(1, -1)


class OnnxSwapper(SwapMethod):
    """One adapter for every model in :data:`SWAPPERS` (pick it with ``model``)."""

    resolution = None

    def __init__(self, device: str = "cpu", model: str = "inswapper_128", detect: bool = True) -> None:
        super().__init__(device)
        if model not in SWAPPERS:
            raise HarnessError(f"unknown ONNX swapper {model!r} (known: {', '.join(SWAPPERS)})")
        self.spec = SWAPPERS[model]
        self.name = model
        if self.spec.source in ("emap", "arcface"):
            # these swappers take w600k_r50 embeddings as trained: flag runs it also scores
            self.identity_model = "arcface_w600k_r50"  # Backend.name of identity_arcface
        self.detect = parse_bool(detect, "detect")

    # --- lazily loaded pieces ------------------------------------------------------------
    @cached_property
    def _weights(self) -> dict[str, tuple[str, str]]:
        from faceeval.weights import verified

        out = {}
        for name in self.spec.weight_files:
            path, sha = verified(name)
            out[name] = (str(path), sha)
        return out

    @cached_property
    def _swapper(self):
        path = self._weights[self.spec.file][0]
        session = _session(path, self.device)
        if self.spec.source == "emap":
            import contextlib
            import io

            from insightface.model_zoo.inswapper import INSwapper

            with contextlib.redirect_stdout(io.StringIO()):  # INSwapper prints its input shape
                return INSwapper(model_file=path, session=session)  # reads emap, names the inputs
        names = {i.name for i in session.get_inputs()}
        if names != {"source", "target"}:
            raise HarnessError(f"{path}: expected graph inputs 'source' and 'target', found {sorted(names)}")
        return session

    @cached_property
    def _arcface(self) -> ArcFaceOnnx:
        return ArcFaceOnnx(self._weights[ARCFACE_FILE][0], self.device)

    @cached_property
    def _converter(self):
        return _session(self._weights[self.spec.converter][0], self.device)

    @cached_property
    def _detector(self):
        from faceeval.faces.detect import DlibDetector

        return DlibDetector(upsample=1)

    # --- the pipeline ---------------------------------------------------------------------
    def five_points(self, image: np.ndarray) -> np.ndarray:
        from faceeval.faces.align import five_points
        from faceeval.faces.templates import crop_landmarks

        return five_points(crop_landmarks(image, self._detector, detect=self.detect))

    def source_input(self, source: np.ndarray, points5: np.ndarray) -> np.ndarray:
        """The identity input the model expects, from a uint8 source crop and its 5 points."""
        from faceeval.faces.templates import warp_to_template

        spec = self.spec
        if spec.source == "image":
            crop, _ = warp_to_template(source, points5, spec.source_template, spec.source_size)
            return crop.astype(np.float32).transpose(2, 0, 1)[None] / 255.0  # (1, 3, s, s) RGB [0, 1]
        crop, _ = warp_to_template(source, points5, ARCFACE_TEMPLATE, ARCFACE_SIZE)
        embedding = self._arcface(crop.astype(np.float32) / 255.0)  # (1, 512) raw
        return self.identity_from_embedding(embedding)

    def identity_from_embedding(self, embedding: np.ndarray) -> np.ndarray:
        """Raw ArcFace embedding (1, 512) -> the model's identity input (1, D) float32."""
        spec = self.spec
        if spec.source == "emap":
            return emap_latent(embedding, self._swapper.emap)
        if spec.source == "arcface":
            return unit(embedding)
        if spec.source == "converter":
            conv = self._converter
            out = np.asarray(conv.run(None, {conv.get_inputs()[0].name: embedding.astype(np.float32)})[0], np.float32)
            out = out.reshape(1, -1)
            return unit(out) if spec.normalise_converted else out
        raise HarnessError(f"{spec.name}: unknown source kind {spec.source!r}")

    def run_model(self, target_crop01: np.ndarray, identity: np.ndarray) -> np.ndarray:
        """Target crop RGB [0, 1] (S, S, 3) on the template + identity input -> swapped (S, S, 3)."""
        spec = self.spec
        x = normalise_input(target_crop01, spec.mean, spec.std)  # (1, 3, S, S)
        if spec.source == "emap":
            # INSwapper.forward divides by its input_std (255): hand it 0..255 values.
            out = self._swapper.forward(x * 255.0, identity.astype(np.float32))
        else:
            out = self._swapper.run(None, {"source": identity.astype(np.float32), "target": x})[0]
        return output_to_rgb01(out, spec)

    def swap_one(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) RGB x2 -> uint8 (H, W, 3)."""
        from faceeval.faces.paste import paste_back
        from faceeval.faces.templates import warp_to_template

        identity = self.source_input(source, self.five_points(source))
        crop, matrix = warp_to_template(target, self.five_points(target), self.spec.template, self.spec.size)
        swapped = self.run_model(crop.astype(np.float32) / 255.0, identity)  # (S, S, 3) [0, 1]
        if self.spec.mask != "box":
            raise HarnessError(f"{self.spec.name}: unknown mask kind {self.spec.mask!r}")
        return paste_back(target, (swapped * 255.0 + 0.5).astype(np.uint8), matrix)

    def swap(self, source, target):
        import torch

        src, tgt = to_uint8(source), to_uint8(target)  # (B, H, W, 3)
        out = np.stack([self.swap_one(s, t) for s, t in zip(src, tgt)])  # (B, H, W, 3)
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0).to(source.device)  # (B, 3, H, W)

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "version": 1, "spec": asdict(self.spec), "detect": self.detect,
                "weights": {k: sha for k, (_, sha) in self._weights.items()}}

    def describe(self) -> dict[str, Any]:
        return {**self.fingerprint(), "paths": {k: p for k, (p, _) in self._weights.items()},
                "providers": providers_for(self.device)}
