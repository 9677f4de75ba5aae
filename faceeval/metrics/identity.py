"""Identity: ID similarity and ID retrieval (top-1, top-5), as face-swap papers compute them.

* ID similarity  = mean cosine between the swapped face's embedding and the source's.
* ID retrieval   = share of pairs whose swapped face's nearest gallery faces (cosine)
  include the source identity (top-1 / top-5). The gallery comes from the protocol
  (CelebA-HQ: the selected images; FF++: one frame per video; demo: every demo face).

Backends (``backend=`` setting, see ``faceeval.metrics.id_backends``): dlib's ResNet face
descriptor (offline default), FaceNet (offline, PyTorch port), insightface ArcFace ONNX
files and arcface_torch ArcFace/CosFace iresnet checkpoints (the papers' models, from the
user's files). Every backend except dlib's gets the ArcFace-style 5-point alignment from
the shared 68 landmarks. Tables name the backend and whether it is standard.
"""

from __future__ import annotations

import numpy as np

from faceeval.api import Backend, EvalBatch, EvalContext, Metric, MetricKey
from faceeval.cache import cached_features
from faceeval.conventions import ID_INPUT, PSP_COLS, PSP_ROWS, IdentityConvention, gallery_vectors, retrieval_scores
from faceeval.errors import HarnessError


def retrieval_hits(query: np.ndarray, gallery: np.ndarray, gallery_ids: list[str], true_ids: list[str],
                   ks: tuple[int, ...] = (1, 5), score: str = "cosine") -> dict[int, np.ndarray]:
    """For each query (N, D): is ``true_ids[i]`` among the identities of the k best-scoring
    gallery vectors (M, D) (``score``: cosine or dot, :func:`faceeval.conventions.retrieval_scores`)?
    Returns {k: bool array (N,)}. Ties break by gallery order (stable sort), so results do not
    depend on batch composition."""
    sims = retrieval_scores(query, gallery, score)  # (N, M)
    order = np.argsort(-sims, axis=1, kind="stable")  # (N, M)
    ids = np.asarray(gallery_ids)[order]  # (N, M) identities by rank
    truth = np.asarray(true_ids)[:, None]
    return {k: (ids[:, :k] == truth).any(axis=1) for k in ks}


def convention_crops(images: list[np.ndarray], conv: IdentityConvention, masks: np.ndarray | None = None,
                     resize=None) -> list[np.ndarray]:
    """Aligned crops -> what the recogniser is fed under ``conv``: masked (``masks`` (N, H, W) bool,
    outside black), then the whole crop resized to 112 (``resize``) or REFace's pSp region
    (``psp``: resized to 256, rows 35:223, cols 32:220, resized to 112). ``crop=model`` keeps the
    crop for the recogniser's own 5-point alignment. The last resize to 112 is ``cv2.INTER_AREA``
    unless the recogniser brings its codebase's own (``resize``: (H, W, 3) -> (112, 112, 3), the
    embedder's ``resize_112``, e.g. ReliableSwap's bilinear ``align_corners=True``)."""
    import cv2

    out = []
    for i, img in enumerate(images):
        x = np.asarray(img)
        if masks is not None:
            x = np.where(masks[i][..., None], x, 0).astype(np.uint8)
        if conv.crop == "psp":
            x = cv2.resize(x, (256, 256), interpolation=cv2.INTER_AREA if x.shape[0] > 256 else cv2.INTER_LINEAR)
            x = x[PSP_ROWS[0]:PSP_ROWS[1], PSP_COLS[0]:PSP_COLS[1]]  # (188, 188, 3)
        if conv.crop != "model" and resize is not None:
            x = resize(np.ascontiguousarray(x))  # (112, 112, 3), the recogniser's codebase's resampling
        elif conv.crop != "model":
            x = cv2.resize(np.ascontiguousarray(x), (ID_INPUT, ID_INPUT), interpolation=cv2.INTER_AREA)
        out.append(np.ascontiguousarray(x))
    return out


class IdentityMetric(Metric):
    name = "identity"
    keys = (
        MetricKey("id_retrieval_top1", "ID retrieval top-1", True, "%", scale=100.0),
        MetricKey("id_retrieval_top5", "ID retrieval top-5", True, "%", scale=100.0),
        MetricKey("id_similarity", "ID similarity", True, "cosine"),
    )

    def __init__(self, device: str = "cpu", backend: str = "dlib", detector: str = "dlib", crop: str = "model",
                 mask: str = "none", gallery: str = "one_per_identity", score: str = "cosine") -> None:
        from faceeval.metrics.id_backends import make_embedder

        self.conv = IdentityConvention(crop=crop, mask=mask, gallery=gallery, score=score)
        self.embedder = make_embedder(backend, device)
        if self.conv.crop != "model" and not self.embedder.uses_landmarks:
            raise HarnessError(f"identity backend {backend!r} aligns with its own predictor: crop={self.conv.crop} "
                               "needs a 5-point recogniser (sface, facenet, arcface*, cosface*)")
        if self.conv.mask == "parsing":
            from faceeval.models.bisenet import WEIGHTS
            from faceeval.weights import verified

            verified(WEIGHTS)  # a missing face parser fails now, with where to get it
        if backend != "dlib":
            self.name = f"identity_{backend}"
        if not self.embedder.standard:
            # A non-standard model never carries the papers' column names: id_similarity_dlib, ...
            self.keys = tuple(MetricKey(f"{k.key}_{backend}", f"{k.label} [{backend}]", k.higher_is_better, k.unit,
                                        k.per_pair, k.scale) for k in IdentityMetric.keys)
        self.backend_setting = backend
        self.device = device
        # the default suite's recogniser aligns on RetinaFace's points (faceeval.faces.retina)
        self.detector = "retinaface_mnet025" if getattr(self.embedder, "finder", None) == "retinaface" else detector
        self._landmarks = None
        self._gallery: np.ndarray | None = None
        self._gallery_ids: list[str] = []

    def backend(self) -> Backend:
        weights = tuple(self.embedder.weight_files())
        if self.embedder.uses_landmarks and self._landmarks is not None:
            weights += tuple(w for w in self._landmarks.weight_files() if w not in weights)
        return Backend(name=self.embedder.name, description=self.embedder.description,
                       standard=self.embedder.standard, weights=weights)

    def fingerprint(self) -> dict:
        fp = {"metric": self.name, "backend": self.embedder.name, "version": self.embedder.version,
              "detector": self.detector if self.embedder.uses_landmarks else None,
              "weights": list(self.backend().weights)}
        if not self.conv.is_default():  # today's runs keep their fingerprint (and their cached values)
            fp["convention"] = self.conv.as_dict()
        return fp

    def notes(self) -> list[str]:
        note = self._landmarks.stats.note(f"{self.name} ({self.detector})") if self._landmarks else None
        return [note] if note else []

    def _ns(self) -> str:
        # features depend on what the recogniser is fed: the crop and mask settings (not the gallery or score)
        extra = "" if (self.conv.crop, self.conv.mask) == ("model", "none") else f":{self.conv.crop}:{self.conv.mask}"
        if self.embedder.uses_landmarks:  # the crop depends on the landmarks' detector
            return f"{self.embedder.name}:v{self.embedder.version}:{self.detector}{extra}"
        return f"{self.embedder.name}:v{self.embedder.version}{extra}"

    def _parser(self):
        """BiSeNet for ``mask=parsing`` (loaded once; its weight file is checked when the metric is made)."""
        if getattr(self, "_bisenet", None) is None:
            from faceeval.models.bisenet import WEIGHTS, load_bisenet
            from faceeval.weights import verified

            path, _ = verified(WEIGHTS)
            self._bisenet = load_bisenet(path).to(self.device)
        return self._bisenet

    def _fed(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """The images as the convention feeds them to the recogniser (:func:`convention_crops`)."""
        masks = None
        if self.conv.mask == "parsing":
            import torch

            from faceeval.models.bisenet import parsing_masks

            x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().to(self.device) / 127.5 - 1.0
            masks = parsing_masks(x, self._parser())[:, 0].cpu().numpy() > 0.5  # (N, H, W)
        return convention_crops(images, self.conv, masks, getattr(self.embedder, "resize_112", None))

    def _embed(self, ctx: EvalContext, shas: list[str], images: list[np.ndarray] | None = None, load=None):
        """Embeddings (N, D), computed only for image contents not in the feature store."""
        if not self.embedder.uses_landmarks:
            return cached_features(ctx.feature_cache, self._ns(), shas, images, self.embedder, load,
                                   weights=self.backend().weights)
        if self.detector == "retinaface_mnet025":
            from faceeval.faces.retina import shared_faces

            self._landmarks = shared_faces(ctx, self.device)
        else:
            from faceeval.faces.landmarks import shared_landmarks

            self._landmarks = shared_landmarks(ctx, self.detector)
        _, five, _ = self._landmarks(ctx, shas, images, load)  # (N, 5, 2), cached
        pairs = None if images is None else list(zip(images, five))
        pair_load = None if load is None else (lambda i: (load(i), five[i]))

        def compute(items):
            imgs, points = [it[0] for it in items], np.stack([it[1] for it in items])  # (N, 5, 2)
            if self.conv.crop != "model":  # already 112 px: the template's points make the alignment the identity
                from faceeval.faces.arcface import ARCFACE_TEMPLATE_112

                points = np.repeat(ARCFACE_TEMPLATE_112[None].astype(np.float32), len(imgs), axis=0)
            if (self.conv.crop, self.conv.mask) != ("model", "none"):
                imgs = self._fed(imgs)
            return self.embedder(imgs, points)

        return cached_features(ctx.feature_cache, self._ns(), shas, pairs, compute, pair_load,
                               weights=self.backend().weights)

    def gallery_items(self, ctx: EvalContext) -> list[tuple[str, str]]:
        """(path, identity) of every gallery image under the convention: the protocol's gallery,
        plus (``every_frame``) every distinct source and target image of the pairs."""
        items = [(g.path, g.identity) for g in ctx.pairset.gallery]
        if self.conv.gallery == "every_frame":
            items += [(p.source, p.source_id) for p in ctx.pairset.pairs] + [(p.target, p.target_id)
                                                                              for p in ctx.pairset.pairs]
        return list(dict.fromkeys(items))

    def embed_paths(self, ctx: EvalContext, paths: list[str]) -> np.ndarray:
        """Embeddings (N, D) of the pair set's images at ``paths`` (relative to its root), as the
        recogniser is fed under the convention; cached in the feature store."""
        shas = [ctx.image_sha(p) for p in paths]
        return self._embed(ctx, shas, load=lambda i: ctx.load_image(paths[i]))

    def prepare(self, ctx: EvalContext) -> None:
        items = self.gallery_items(ctx)
        if not items:
            raise ValueError(f"protocol {ctx.pairset.protocol} supplies no gallery: ID retrieval needs one")
        vectors = self.embed_paths(ctx, [p for p, _ in items])  # (M, D)
        self._gallery, self._gallery_ids = gallery_vectors(vectors, [i for _, i in items], self.conv.gallery)

    def update(self, batch: EvalBatch, ctx: EvalContext) -> dict[str, np.ndarray]:
        assert self._gallery is not None, "prepare() must run first"
        swapped = self._embed(ctx, batch.swapped_sha, list(batch.swapped))  # (B, D)
        source = self._embed(ctx, batch.source_sha, list(batch.source))  # (B, D)
        by_id = {p.pair_id: p for p in ctx.pairset.pairs}
        true_ids = [by_id[i].source_id for i in batch.pair_ids]
        hits = retrieval_hits(swapped, self._gallery, self._gallery_ids, true_ids, score=self.conv.score)
        values = (hits[1].astype(np.float64), hits[5].astype(np.float64),
                  np.sum(swapped * source, axis=1).astype(np.float64))
        return {k.key: v for k, v in zip(self.keys, values)}
