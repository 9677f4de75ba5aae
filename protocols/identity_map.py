"""FF++ identities are people: a user-confirmed map from video id to person id.

FaceForensics++ has 1,000 original videos but fewer people: the MegaFS authors merged
duplicates by hand into 885 identities (videos 043 and 343 show the same person; so do 179,
183 and 826). Without a map every video is its own identity, and a retrieval that lands on
another video of the same person counts as a miss.

The map is a CSV file with the header ``video,person`` and one row per video::

    video,person
    043,p043
    343,p043

A video the map does not list is its own person (its person id is its video id). A person id
that is also a video's id must hold that video (else video ``343`` unlisted and person ``343``
would silently be one person). Blank lines and lines starting with ``#`` are ignored.

:func:`read_identity_map` lists every problem, one line each, before any work: a header
missing, a row with the wrong number of columns, an empty or badly formed id, a duplicated
row, a video given two persons, a video id that is not a video of the tree (with a
did-you-mean). :func:`propose_groups` is the pure part of ``harness prepare ffpp
--suggest-identity-map``: videos whose mean embeddings' cosine reaches a threshold, joined
transitively.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceeval.options import suggest

HEADER = ("video", "person")
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")  # the same rule as FF++ video names
#: cosine between two videos' mean SFace embeddings at or above which a merge is proposed
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class IdentityMap:
    """A checked map: ``persons`` holds (video, person) for every listed video, sorted by video."""

    path: Path
    sha256: str  # of the file's bytes: recorded with every run made under the map
    persons: tuple[tuple[str, str], ...]

    def person(self, video: str) -> str:
        """The person of ``video`` (the video id itself when the map does not list it)."""
        return dict(self.persons).get(video, video)

    def groups(self, videos: Sequence[str]) -> dict[str, list[str]]:
        """person -> its videos among ``videos`` (in the given order)."""
        out: dict[str, list[str]] = {}
        for v in videos:
            out.setdefault(self.person(v), []).append(v)
        return out

    def describe(self, videos: Sequence[str]) -> str:
        """One line for the report: file, sha256, videos and the people they are."""
        merged = {p: vs for p, vs in self.groups(videos).items() if len(vs) > 1}
        shown = "; ".join(f"{p}: {', '.join(vs)}" for p, vs in list(merged.items())[:5])
        more = f"; ... (+{len(merged) - 5} more)" if len(merged) > 5 else ""
        people = len(self.groups(videos))
        return (f"identity map {self.path.name} (sha256 {self.sha256}): {len(videos)} videos are {people} people; "
                f"retrieval counts a hit on any video of the source's person"
                + (f"; merged: {shown}{more}" if merged else ""))


def read_identity_map(path: Path | str, videos: Sequence[str], where: str = "the tree"
                      ) -> tuple[IdentityMap | None, list[str]]:
    """Parse and check the map against ``videos`` (the ids of the tree). Returns (map, []) or
    (None, problems), one line each, every problem of the file at once."""
    path = Path(path).expanduser()
    name = str(path)
    try:
        data = path.read_bytes()
        text = data.decode("utf-8-sig")
    except FileNotFoundError:
        return None, [f"identity map {name}: file not found"]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"identity map {name}: unreadable ({exc})"]
    known = set(videos)
    person_of, problems = _read_rows(text, path, known, where)
    problems += _person_id_clashes(person_of, known, path.name)
    if problems:
        return None, problems
    persons = tuple(sorted((v, p) for v, (p, _) in person_of.items()))
    return IdentityMap(path.resolve(), hashlib.sha256(data).hexdigest(), persons), []


def _read_rows(text: str, path: Path, known: set[str], where: str
               ) -> tuple[dict[str, tuple[str, int]], list[str]]:
    """video -> (person, line) of the map's rows, and the problems of its rows (header, columns,
    ids, duplicated rows, a video in two persons, unknown videos, an empty file), in file order."""
    problems: list[str] = []
    rows: dict[tuple[str, str], int] = {}  # (video, person) -> first line
    person_of: dict[str, tuple[str, int]] = {}  # video -> (person, line)
    header_seen = False
    for number, fields in _rows(text):
        at = f"identity map {path.name} line {number}"
        cells = [c.strip() for c in fields]
        if not header_seen:
            header_seen = True
            problem, is_row = _header_problem(at, cells)
            if problem:
                problems.append(problem)
            if not is_row:
                continue
        problem = _cells_problem(at, cells)
        if problem:
            problems.append(problem)
            continue
        video, person = cells
        if (video, person) in rows:
            problems.append(f"{at}: duplicated row {video},{person} (first on line {rows[(video, person)]})")
            continue
        rows[(video, person)] = number
        if video in person_of:
            first, line = person_of[video]
            problems.append(f"{at}: video {video} is in two persons: {first} (line {line}) and {person} "
                            f"(line {number})")
            continue
        person_of[video] = (person, number)
        if video not in known:
            problems.append(f"{at}: unknown video {video}: not a video of {where}{suggest(video, sorted(known))}")
    if not header_seen:
        problems.append(f"identity map {path}: empty file (expected the header 'video,person' and one row per video)")
    return person_of, problems


def _header_problem(at: str, cells: list[str]) -> tuple[str | None, bool]:
    """The first row's problem (None for the header ``video,person``) and whether it is to be
    read as a row of the map (a header missing, the row itself well formed)."""
    got = tuple(c.lower() for c in cells)
    if got == HEADER:
        return None, False
    hint = suggest(",".join(got), [",".join(HEADER)])
    if hint or (len(cells) == 2 and not all(ID_PATTERN.match(c) for c in cells)):
        return f"{at}: expected the header 'video,person', got {','.join(cells)!r}{hint}", False
    problem = f"{at}: header missing: the first row must be 'video,person', got {','.join(cells)!r}"
    return problem, len(cells) == 2  # neither header nor row: reported once


def _cells_problem(at: str, cells: list[str]) -> str | None:
    """The problem of one row on its own: the number of columns, an empty or badly formed id."""
    if len(cells) != 2:
        return f"{at}: expected 2 columns (video,person), got {len(cells)}: {','.join(cells)!r}"
    empty = [h for h, c in zip(HEADER, cells) if not c]
    if empty:
        return f"{at}: empty {' and '.join(empty)} id in {','.join(cells)!r}"
    bad = [f"{h} {c!r}" for h, c in zip(HEADER, cells) if not ID_PATTERN.match(c)]
    if bad:
        return f"{at}: {' and '.join(bad)}: ids use only letters, digits, '_' and '-'"
    return None


def _person_id_clashes(person_of: dict[str, tuple[str, int]], known: set[str], file: str) -> list[str]:
    """A person id that is also the id of a video of the tree must hold that video: one problem
    for each that does not."""
    problems = []
    for person in sorted({p for p, _ in person_of.values()}):
        if person in known and person_of.get(person, ("",))[0] != person:
            line = min(n for p, n in person_of.values() if p == person)
            held = person_of.get(person)
            why = f"the map puts video {person} in person {held[0]}" if held else f"video {person} is not listed"
            problems.append(f"identity map {file} line {line}: person id {person} is also the id of video "
                            f"{person}, but {why}: list {person},{person} or choose another person id")
    return problems


def _rows(text: str):
    """(line number, fields) of each CSV row that is not blank or a ``#`` comment."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        yield number, next(csv.reader([line]))


# --- proposing merges ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProposedGroup:
    """Videos proposed as one person: joined by the pairs at or above the threshold."""

    person: str  # the smallest video id of the group
    videos: tuple[str, ...]  # sorted
    links: tuple[tuple[str, str, float], ...]  # (video, video, cosine) of the pairs that joined them


def mean_embeddings(vectors: np.ndarray, owners: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Per video the mean of its frames' unit embeddings (N, D) -> (videos, (V, D) unit means)."""
    from faceeval.conventions import gallery_vectors, unit_rows

    means, videos = gallery_vectors(unit_rows(vectors), owners, "identity_mean")  # (V, D), first-appearance order
    return videos, unit_rows(means)


def propose_groups(videos: Sequence[str], means: np.ndarray, threshold: float = DEFAULT_THRESHOLD
                   ) -> list[ProposedGroup]:
    """Groups of two or more videos whose mean embeddings (V, D, unit rows) have cosine >= threshold,
    joined transitively (a-b and b-c make one group a, b, c); sorted by their first video."""
    sims = np.asarray(means, np.float64) @ np.asarray(means, np.float64).T  # (V, V)
    parent = list(range(len(videos)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    links = []
    for i, j in zip(*np.triu_indices(len(videos), k=1)):
        if sims[i, j] >= threshold:
            links.append((int(i), int(j), float(sims[i, j])))
            parent[root(int(j))] = root(int(i))
    members: dict[int, list[int]] = {}
    for i in range(len(videos)):
        members.setdefault(root(i), []).append(i)
    groups = []
    for idx in members.values():
        if len(idx) < 2:
            continue
        ids = tuple(sorted(videos[i] for i in idx))
        inside = set(idx)
        groups.append(ProposedGroup(ids[0], ids, tuple((videos[i], videos[j], round(c, 4))
                                                       for i, j, c in links if i in inside)))
    return sorted(groups, key=lambda g: g.videos)


def proposal_csv(groups: Sequence[ProposedGroup], threshold: float, num_videos: int) -> str:
    """The proposed map: the header, then each group's videos under its person (the smallest video
    id), each group after a comment with the cosines that joined it. Videos not listed stay their
    own person, so the file lists only the proposed merges."""
    lines = [f"# Proposed by harness prepare ffpp --suggest-identity-map: {len(groups)} group(s) among {num_videos} "
             f"videos (mean SFace embeddings, cosine >= {threshold:g}, joined transitively).",
             "# A PROPOSAL: check each group on the HTML page beside this file; delete wrong rows or move them to",
             "# another person, add merges it missed; unlisted videos are their own person. Then pass the file",
             "# to the run: --option identity_map=PATH.",
             ",".join(HEADER)]
    for g in groups:
        lines.append("# " + "; ".join(f"{a}-{b} cosine {c:.3f}" for a, b, c in g.links))
        lines += [f"{v},{g.person}" for v in g.videos]
    return "\n".join(lines) + "\n"


def closest_below(videos: Sequence[str], means: np.ndarray, groups: Sequence[ProposedGroup], threshold: float,
                  count: int = 20) -> list[tuple[str, str, float]]:
    """The ``count`` most similar pairs of videos in different proposed groups (all below the
    threshold): where a merge the threshold missed would be."""
    group_of = {v: g.person for g in groups for v in g.videos}
    sims = np.asarray(means, np.float64) @ np.asarray(means, np.float64).T  # (V, V)
    out = [(videos[i], videos[j], float(sims[i, j])) for i, j in zip(*np.triu_indices(len(videos), k=1))
           if sims[i, j] < threshold and group_of.get(videos[i], videos[i]) != group_of.get(videos[j], videos[j])]
    return sorted(out, key=lambda t: -t[2])[:count]


def _data_uri(img: np.ndarray, side: int = 96) -> str:
    """A small JPEG of an RGB image (H, W, 3) uint8, inlined as a data: URI (the page needs no other file)."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).resize((side, side), Image.Resampling.LANCZOS).save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def proposal_html(groups: Sequence[ProposedGroup], near: Sequence[tuple[str, str, float]],
                  faces: dict[str, list[np.ndarray]], threshold: float, csv_name: str, num_videos: int) -> str:
    """A self-contained page (thumbnails inlined, no network) showing each proposed group's videos,
    a few frames each, the cosines that joined them, and the closest pairs left apart."""
    from html import escape

    def strip(video: str) -> str:
        imgs = "".join(f'<img src="{_data_uri(f)}" alt="{escape(video)}">' for f in faces.get(video, []))
        return f'<div class="video"><div class="id">video {escape(video)}</div>{imgs}</div>'

    parts = [f"<h2>Proposed person {escape(g.person)}: videos {escape(', '.join(g.videos))}</h2>"
             f"<p>{escape('; '.join(f'{a}-{b} cosine {c:.3f}' for a, b, c in g.links))}</p>"
             + "".join(strip(v) for v in g.videos) for g in groups]
    if not groups:
        parts.append("<p><strong>No pair of videos reaches the threshold: nothing to merge is proposed.</strong></p>")
    if near:
        parts.append("<h2>Closest pairs left apart (below the threshold)</h2><p>Check these for merges the "
                     "threshold missed; add them to the CSV by hand.</p>")
        parts += [f"<h3>{escape(a)} and {escape(b)}: cosine {c:.3f}</h3>{strip(a)}{strip(b)}" for a, b, c in near]
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>FF++ identity map: proposed merges</title>"
            "<style>body{font-family:sans-serif;margin:1.5em}.video{display:inline-block;margin:0 1em .8em 0;"
            "vertical-align:top}.id{font-weight:bold}img{width:96px;height:96px;margin:2px}</style></head><body>"
            f"<h1>FF++ identity map: {len(groups)} proposed group(s) among {num_videos} videos</h1>"
            f"<p>Videos whose mean SFace embeddings have cosine &ge; {threshold:g}, joined transitively. This is a "
            f"proposal: open <code>{escape(csv_name)}</code> beside this page, delete the rows of any group that "
            "shows two different people, add merges it missed, then run with <code>--option "
            "identity_map=PATH</code>. The MegaFS authors found 885 people among FF++'s 1,000 videos by hand "
            "(e.g. 043 and 343; 179, 183 and 826).</p>" + "".join(parts) + "</body></html>\n")


def suggest_identity_map(pairset, out_dir: Path, scorer, images, *, threshold: float = DEFAULT_THRESHOLD,
                         device: str = "cpu", frames_shown: int = 3) -> tuple[Path, Path, list[ProposedGroup]]:
    """Embed every frame the FF++ pair set holds (gallery and evaluation frames) with ``scorer``
    (an identity metric with ``embed_paths``; the application passes the default identity
    network's, ``identity_sface``), features cached with the runs', average per video, propose
    groups (:func:`propose_groups`) and write ``ffpp-identity-map.proposed.csv`` and ``.html``
    into ``<out_dir>/identity-maps/``. ``images`` loads the pair set's crops (``load(rel)``,
    ``sha(rel)``: the runner's ``ImageSource``). Returns (csv, html, groups)."""
    from faceeval.api import EvalContext
    from faceeval.cache import FeatureStore
    from faceeval.errors import HarnessError
    from faceeval.images import atomic_write_text

    if not 0.0 < threshold <= 1.0:
        raise HarnessError(f"--identity-threshold must be in (0, 1], got {threshold:g}")
    paths = list(dict.fromkeys([g.path for g in pairset.gallery] + [p for fp in pairset.pairs
                                                                     for p in (fp.source, fp.target)]))
    owners = [p.split("/", 1)[0] for p in paths]  # crops are <video>/<frame>.png
    store = FeatureStore(Path(out_dir) / "cache" / "features.sqlite")
    try:
        ctx = EvalContext(pairset=pairset, device=device, feature_cache=store, load_image=images.load,
                          image_sha=images.sha)
        vectors = scorer.embed_paths(ctx, paths)  # (N, D)
    finally:
        store.close()
    videos, means = mean_embeddings(vectors, owners)  # (V, D)
    groups = propose_groups(videos, means, threshold)
    near = closest_below(videos, means, groups, threshold)
    shown = {v for g in groups for v in g.videos} | {v for a, b, _ in near for v in (a, b)}
    faces: dict[str, list[np.ndarray]] = {}
    for p, v in zip(paths, owners):
        if v in shown and len(faces.setdefault(v, [])) < frames_shown:
            faces[v].append(images.load(p))
    folder = Path(out_dir) / "identity-maps"
    csv_path, html_path = folder / "ffpp-identity-map.proposed.csv", folder / "ffpp-identity-map.proposed.html"
    atomic_write_text(csv_path, proposal_csv(groups, threshold, len(videos)))
    atomic_write_text(html_path, proposal_html(groups, near, faces, threshold, csv_path.name, len(videos)))
    return csv_path, html_path, groups
