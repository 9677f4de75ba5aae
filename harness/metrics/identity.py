"""Identity: ID similarity and ID retrieval (top-1, top-5), as face-swap papers compute them.

* ID similarity  = mean cosine between the swapped face's embedding and the source's.
* ID retrieval   = share of pairs whose swapped face's nearest gallery faces (cosine)
  include the source identity (top-1 / top-5). The gallery comes from the protocol
  (CelebA-HQ: the selected images; FF++: one frame per video; demo: every demo face).

Backends (``backend=`` setting, see ``harness.metrics.id_backends``): dlib's ResNet face
descriptor (offline default), FaceNet (offline, PyTorch port), insightface ArcFace ONNX
files and arcface_torch ArcFace/CosFace iresnet checkpoints (the papers' models, from the
user's files). Every backend except dlib's gets the ArcFace-style 5-point alignment from
the shared 68 landmarks. Tables name the backend and whether it is standard.
"""

from __future__ import annotations

import numpy as np

from harness.api import Backend, EvalBatch, EvalContext, Metric, MetricKey
from harness.cache import cached_features



def retrieval_hits(query: np.ndarray, gallery: np.ndarray, gallery_ids: list[str], true_ids: list[str],
                   ks: tuple[int, ...] = (1, 5)) -> dict[int, np.ndarray]:
    """For each query (N, D) unit vector: is ``true_ids[i]`` among the identities of the
    k nearest gallery vectors (M, D)? Returns {k: bool array (N,)}. Ties break by
    gallery order (stable sort), so results do not depend on batch composition."""
    sims = query @ gallery.T  # (N, M) cosine
    order = np.argsort(-sims, axis=1, kind="stable")  # (N, M)
    ids = np.asarray(gallery_ids)[order]  # (N, M) identities by rank
    truth = np.asarray(true_ids)[:, None]
    return {k: (ids[:, :k] == truth).any(axis=1) for k in ks}


class IdentityMetric(Metric):
    name = "identity"
    keys = (
        MetricKey("id_retrieval_top1", "ID retrieval top-1", True, "%", scale=100.0),
        MetricKey("id_retrieval_top5", "ID retrieval top-5", True, "%", scale=100.0),
        MetricKey("id_similarity", "ID similarity", True, "cosine"),
    )

    def __init__(self, device: str = "cpu", backend: str = "dlib", detector: str = "dlib") -> None:
        from harness.metrics.id_backends import make_embedder

        self.embedder = make_embedder(backend, device)
        if backend != "dlib":
            self.name = f"identity_{backend}"
        if not self.embedder.standard:
            # A non-standard model never carries the papers' column names: id_similarity_dlib, ...
            self.keys = tuple(MetricKey(f"{k.key}_{backend}", f"{k.label} [{backend}]", k.higher_is_better, k.unit,
                                        k.per_pair, k.scale) for k in IdentityMetric.keys)
        self.backend_setting = backend
        self.device = device
        # the default suite's recogniser aligns on RetinaFace's points (harness.faces.retina)
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
        return {"metric": self.name, "backend": self.embedder.name, "version": self.embedder.version,
                "detector": self.detector if self.embedder.uses_landmarks else None,
                "weights": list(self.backend().weights)}

    def notes(self) -> list[str]:
        note = self._landmarks.stats.note(f"{self.name} ({self.detector})") if self._landmarks else None
        return [note] if note else []

    def _ns(self) -> str:
        if self.embedder.uses_landmarks:  # the crop depends on the landmarks' detector
            return f"{self.embedder.name}:v{self.embedder.version}:{self.detector}"
        return f"{self.embedder.name}:v{self.embedder.version}"

    def _embed(self, ctx: EvalContext, shas: list[str], images: list[np.ndarray] | None = None, load=None):
        """Embeddings (N, D), computed only for image contents not in the feature store."""
        if not self.embedder.uses_landmarks:
            return cached_features(ctx.feature_cache, self._ns(), shas, images, self.embedder, load,
                                   weights=self.backend().weights)
        if self.detector == "retinaface_mnet025":
            from harness.faces.retina import shared_faces

            self._landmarks = shared_faces(ctx, self.device)
        else:
            from harness.faces.landmarks import shared_landmarks

            self._landmarks = shared_landmarks(ctx, self.detector)
        _, five, _ = self._landmarks(ctx, shas, images, load)  # (N, 5, 2), cached
        pairs = None if images is None else list(zip(images, five))
        pair_load = None if load is None else (lambda i: (load(i), five[i]))

        def compute(items):
            return self.embedder([it[0] for it in items], np.stack([it[1] for it in items]))

        return cached_features(ctx.feature_cache, self._ns(), shas, pairs, compute, pair_load,
                               weights=self.backend().weights)

    def prepare(self, ctx: EvalContext) -> None:
        paths = [g.path for g in ctx.pairset.gallery]
        if not paths:
            raise ValueError(f"protocol {ctx.pairset.protocol} supplies no gallery: ID retrieval needs one")
        shas = [ctx.image_sha(p) for p in paths]
        self._gallery = self._embed(ctx, shas, load=lambda i: ctx.load_image(paths[i]))  # (M, D)
        self._gallery_ids = [g.identity for g in ctx.pairset.gallery]

    def update(self, batch: EvalBatch, ctx: EvalContext) -> dict[str, np.ndarray]:
        assert self._gallery is not None, "prepare() must run first"
        swapped = self._embed(ctx, batch.swapped_sha, list(batch.swapped))  # (B, D)
        source = self._embed(ctx, batch.source_sha, list(batch.source))  # (B, D)
        by_id = {p.pair_id: p for p in ctx.pairset.pairs}
        true_ids = [by_id[i].source_id for i in batch.pair_ids]
        hits = retrieval_hits(swapped, self._gallery, self._gallery_ids, true_ids)
        values = (hits[1].astype(np.float64), hits[5].astype(np.float64),
                  np.sum(swapped * source, axis=1).astype(np.float64))
        return {k.key: v for k, v in zip(self.keys, values)}
