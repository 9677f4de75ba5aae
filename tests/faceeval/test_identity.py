"""Identity metric: retrieval on constructed embeddings, and the real dlib backend."""

from __future__ import annotations

import numpy as np

from faceeval.metrics.id_backends import DlibEmbedder as DlibFaceEmbedder
from faceeval.metrics.identity import retrieval_hits


def test_retrieval_on_constructed_embeddings():
    # gallery: 4 identities on the axes of R^4; queries near known axes
    gallery = np.eye(4, dtype=np.float32)
    ids = ["a", "b", "c", "d"]
    q = np.array([[0.9, 0.1, 0, 0], [0.1, 0.2, 0.95, 0], [0.6, 0.5, 0.4, 0.3]], dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    hits = retrieval_hits(q, gallery, ids, ["a", "c", "b"], ks=(1, 2, 4))
    assert hits[1].tolist() == [True, True, False]  # third query's nearest is "a"
    assert hits[2].tolist() == [True, True, True]  # ... and "b" is second
    assert hits[4].all()


def test_retrieval_ties_break_by_gallery_order():
    gallery = np.array([[1.0, 0], [1.0, 0]], dtype=np.float32)
    hits = retrieval_hits(np.array([[1.0, 0]], np.float32), gallery, ["x", "y"], ["y"], ks=(1, 2))
    assert hits[1].tolist() == [False] and hits[2].tolist() == [True]


def test_dlib_embedding_separates_people_on_real_faces(demo_pairset):
    from faceeval.images import load_rgb

    paths = [demo_pairset.path(g.path) for g in demo_pairset.gallery[:8]]
    faces = [load_rgb(p) for p in paths]
    emb = DlibFaceEmbedder()
    e = emb(faces)  # (8, 128)
    mirrored = emb([f[:, ::-1].copy() for f in faces])
    assert e.shape == (8, 128)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    same = np.sum(e * mirrored, axis=1)  # same person, mirrored photo
    cross = e @ e.T
    others = cross[~np.eye(8, dtype=bool)].reshape(8, 7)
    # every face is closer to its own mirror image than to any other person
    assert (same[:, None] > others).all()
    # batch-size independence: one at a time gives the same vectors
    one_by_one = np.concatenate([emb([f]) for f in faces[:3]])
    np.testing.assert_allclose(one_by_one, e[:3], atol=1e-6)
