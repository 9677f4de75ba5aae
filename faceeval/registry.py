"""One registry mechanism for methods, protocols and metrics.

Entries are lazy ``"package.module:Object"`` strings, so listing what exists never
imports torch or a model backend. Third-party packages add entries through the
entry-point groups ``codeswap_harness.methods``, ``codeswap_harness.protocols`` and
``codeswap_harness.metrics`` (value: ``"their_pkg.module:Object"``).

Example:
    >>> from faceeval.registry import METHODS
    >>> METHODS.names()[:2]
    ['source', 'target']
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from faceeval.errors import HarnessError


@dataclass(frozen=True)
class Entry:
    """A registered object, not imported until it is needed."""

    name: str
    target: str  # "package.module:Object"
    description: str = ""
    aliases: tuple[str, ...] = ()
    origin: str = "builtin"  # or the distribution that provided it through an entry point
    options: tuple[tuple[str, Any], ...] = ()  # keyword arguments bound at construction
    requires: tuple[str, ...] = ()  # weight-file names (faceeval.weights) it cannot run without; "a|b": either
    explicit_only: bool = False  # run only when named (it needs options): `--method all` skips it
    # "module:function" called with the entry's options: why `--method all` should skip it
    # (a string), or None when it can run; checked without importing the entry
    not_ready: str = ""
    kind: str = "entry"  # "method", "protocol", "metric": used in messages
    base: str = ""  # "module:Class" every loaded object must subclass (the registry's interface)

    def weight_problems(self) -> dict[str, HarnessError]:
        """Required weight files that cannot be used -> why (a one-line error): not found
        (``WeightNotFound``: where it was looked for) or refused for its checksum
        (``WeightMismatch``); checked without importing the entry."""
        from faceeval.weights import locate

        problems = {}
        for required in self.requires:
            for name in required.split("|"):  # "a|b": either file will do
                try:
                    locate(name)
                    break
                except HarnessError as exc:
                    problem = exc
            else:
                problems[name] = problem  # the last alternative's (the packaged one: names its fetch)
        return problems

    def missing_weights(self) -> list[str]:
        """Names of the required weight files that cannot be used (:meth:`weight_problems`)."""
        return list(self.weight_problems())

    def skip_reason(self) -> str | None:
        """Why ``--method all`` skips this entry (missing weights, or its ``not_ready`` check)."""
        missing = self.missing_weights()
        if missing:
            return f"weights missing: {', '.join(missing)}"
        if self.not_ready:
            module_name, _, attr = self.not_ready.partition(":")
            return getattr(importlib.import_module(module_name), attr)(**dict(self.options))
        return None

    def load(self) -> Any:
        """Import and return the registered object (a class or factory)."""
        module_name, _, attr = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - a plugin may fail at import in any way (SyntaxError, RuntimeError...)
            text = " ".join(str(exc).split())[:300]
            raise HarnessError(f"{self.kind} {self.name}: cannot import {module_name} "
                               f"({type(exc).__name__}: {text})") from exc
        try:
            obj = getattr(module, attr)
        except AttributeError as exc:
            raise HarnessError(f"{self.name}: {module_name} has no attribute {attr!r}") from exc
        if self.base:
            base_module, _, base_name = self.base.partition(":")
            base = getattr(importlib.import_module(base_module), base_name)
            if not (isinstance(obj, type) and issubclass(obj, base)):
                raise HarnessError(f"{self.kind} {self.name!r}: {self.target} is not a subclass of "
                                   f"{base.__module__}.{base.__name__}, the interface every {self.kind} implements")
        return obj

    def broken(self) -> str | None:
        """Why a plugin (an entry-point entry) cannot be used: it fails at import or is not
        a subclass of its interface; None when it loads. Built-ins are not imported here
        (listing them must not load a model backend); their import errors surface when run."""
        if self.origin == "builtin":
            return None
        try:
            self.load()
        except HarnessError as exc:
            return f"broken: {exc}"
        return None

    def bind(self, **kwargs: Any) -> dict[str, Any]:
        """The entry's bound options overridden by ``kwargs``, checked against the class's
        declared settings and text values converted (:func:`faceeval.options.bind`): an
        unknown key is an error with the closest known name."""
        from faceeval.options import bind

        return bind(self.load(), {**dict(self.options), **kwargs}, f"{self.kind} {self.name!r}")

    def create(self, **kwargs: Any) -> Any:
        """Load and instantiate with :meth:`bind`'s settings."""
        return self.load()(**self.bind(**kwargs))


@dataclass
class Registry:
    """A named collection of lazy entries with aliases and close-name suggestions."""

    kind: str  # "method", "protocol", "metric": used in messages
    entry_point_group: str
    base: str = ""  # "module:Class" that every entry must subclass, checked when it loads
    _entries: dict[str, Entry] = field(default_factory=dict)
    _aliases: dict[str, str] = field(default_factory=dict)
    _plugins_loaded: bool = False

    def register(
        self,
        name: str,
        target: str,
        *,
        description: str = "",
        aliases: tuple[str, ...] = (),
        origin: str = "builtin",
        options: dict[str, Any] | None = None,
        requires: tuple[str, ...] = (),
        explicit_only: bool = False,
        not_ready: str = "",
    ) -> Entry:
        """Add an entry; validates the name and target form now, not at first use."""
        if not name or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise ValueError(f"invalid {self.kind} name {name!r}: use letters, digits, '_', '-', '.'")
        if ":" not in target or target.startswith(":") or target.endswith(":"):
            raise ValueError(f"{self.kind} {name!r}: target must look like 'package.module:Object', got {target!r}")
        for key in (name, *aliases):
            if key in self._entries or key in self._aliases:
                raise ValueError(f"{self.kind} name {key!r} is registered twice")
        entry = Entry(name, target, description, tuple(aliases), origin, tuple(sorted((options or {}).items())),
                      tuple(requires), explicit_only, not_ready, self.kind, self.base)
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name
        return entry

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._entries or ep.name in self._aliases:
                continue  # a built-in name wins; the plugin stays reachable by its own other names
            dist = ep.dist.name if ep.dist is not None else "plugin"
            self.register(ep.name, ep.value, description=f"plugin from {dist}", origin=dist)

    def names(self) -> list[str]:
        """Registered canonical names, in registration order (built-ins first)."""
        self._load_plugins()
        return list(self._entries)

    def entries(self) -> list[Entry]:
        self._load_plugins()
        return list(self._entries.values())

    def resolve(self, name: str) -> Entry:
        """The entry for ``name`` or an alias; unknown names raise with a suggestion."""
        self._load_plugins()
        canonical = self._aliases.get(name, name)
        if canonical in self._entries:
            return self._entries[canonical]
        candidates = list(self._entries) + list(self._aliases)
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise HarnessError(
            f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self._entries)})"
        )

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.resolve(name).create(**kwargs)


METHODS = Registry("method", "codeswap_harness.methods", "faceeval.api:SwapMethod")
PROTOCOLS = Registry("protocol", "codeswap_harness.protocols", "faceeval.api:FaceProtocol")
METRICS = Registry("metric", "codeswap_harness.metrics", "faceeval.api:Metric")

# --- built-in entries (strings only: nothing below imports a backend) -------------------
from codeswap.variants import VARIANT_LABELS  # noqa: E402 - tables, no backend
from faceeval.metrics.id_backends import BACKEND_FILES as ID_BACKEND_FILES  # noqa: E402
from faceeval.fetch import requires as fetch_requires  # noqa: E402
from faceeval.weights import DLIB_68  # noqa: E402
from methods.onnx_swappers import SWAPPERS  # noqa: E402
from methods.simswap import RELEASES as SIMSWAP_RELEASES  # noqa: E402

METHODS.register("source", "methods.reference:SourceMethod",
                 description="returns the source face: the identity upper bound")
METHODS.register("target", "methods.reference:TargetMethod",
                 description="returns the target face: the lower bound (no swap)")
METHODS.register("classical", "methods.classical:ClassicalSwap",
                 description="landmark triangle warp + Lab colour transfer + Poisson blend (no swapper weights)",
                 requires=(DLIB_68,))
METHODS.register("precomputed", "methods.precomputed:PrecomputedMethod",
                 description="scores outputs made elsewhere: --method-option precomputed.dir=DIR "
                             "(<pair_id>.png or <source_stem>__<target_stem>.png); see `harness export-pairs`",
                 explicit_only=True)
# Derived from the methods' own tables (torch-free modules), so each fact lives once.
for _spec in SWAPPERS.values():
    METHODS.register(_spec.name, "methods.onnx_swappers:OnnxSwapper", options={"model": _spec.name},
                     description=f"ONNX swapper {_spec.name} (onnxruntime; aligned to its template, pasted back)",
                     requires=(*_spec.weight_files, DLIB_68))
for _release, _spec in SIMSWAP_RELEASES.items():
    METHODS.register(_release, "methods.simswap:SimSwapMethod", options={"release": _release},
                     description=f"{_spec.label} from the official PyTorch checkpoint (watermark never added)",
                     requires=(*_spec.weight_files, DLIB_68))
for _v, _what in VARIANT_LABELS.items():
    if _v == "full":
        METHODS.register("codeswap", "methods.codeswap:CodeSwapMethod",
                         description="CodeSwap (checkpoint via --method-option codeswap.checkpoint=PATH; "
                                     "else the small demo model shipped with the code)",
                         not_ready="codeswap.variants:demo_not_ready")
    else:
        METHODS.register(f"codeswap_{_v}", "methods.codeswap:CodeSwapMethod",
                         description=f"CodeSwap ablation {_what}", options={"variant": _v},
                         not_ready="codeswap.variants:demo_not_ready")

PROTOCOLS.register("demo", "protocols.demo:DemoProtocol",
                   description="real faces shipped with the repo (~30 identities), one pair per image")
PROTOCOLS.register("folder", "protocols.folder:FolderProtocol",
                   description="any folder of face photos (optionally one subfolder per identity)")
PROTOCOLS.register("celebahq", "protocols.celebahq:CelebAHQProtocol",
                   description="CodeSwap's CelebA-HQ set: 1,000 distinct identities, 1,000 pairs (--root, the user's copy)",
                   aliases=("celeba-hq",))
PROTOCOLS.register("ffpp", "protocols.ffpp:FFppProtocol",
                   description="CodeSwap's FF++ set: 10 frames x 1,000 videos, 10,000 pairs (--root, the user's copy)",
                   aliases=("ff++", "faceforensics"))

# identity metrics: (name, backend setting, description, aliases); weight files from the backends' table
for _name, _backend, _what, _aliases in (
    ("identity", "dlib", "ID similarity and ID retrieval top-1/top-5 (dlib ResNet-128, offline)", ("id", "id_dlib")),
    ("identity_facenet", "facenet", "ID similarity/retrieval with FaceNet CASIA (PyTorch port, offline)", ()),
    ("identity_arcface", "arcface", "ID similarity/retrieval with ArcFace w600k_r50 (insightface buffalo_l ONNX)", ()),
    ("identity_arcface_glint", "arcface_glint",
     "ID similarity/retrieval with ArcFace glintr100 (insightface antelopev2 ONNX)", ()),
    ("identity_arcface_r100", "arcface_r100", "ID similarity/retrieval with arcface_torch ArcFace iresnet-100 MS1MV3", ()),
    ("identity_cosface", "cosface", "ID similarity/retrieval with CosFace iresnet-100 Glint360K (arcface_torch)", ()),
    ("identity_cosface_r50", "cosface_r50",
     "ID similarity/retrieval with CosFace iresnet-50 Glint360K (FaceDancer's evaluator)", ()),
    ("identity_arcface_irse50", "arcface_irse50",
     "ID similarity/retrieval with ArcFace IR-SE-50 (pSp's model_ir_se50.pth; REFace's evaluator)", ()),
    ("identity_cosface_sphere20", "cosface_sphere20",
     "ID similarity/retrieval with CosFace sphere20 VGGFace2 (ReliableSwap's evaluator)", ()),
):
    METRICS.register(_name, "faceeval.metrics.identity:IdentityMetric", description=_what, aliases=_aliases,
                     options={} if _backend == "dlib" else {"backend": _backend}, requires=ID_BACKEND_FILES[_backend])
METRICS.register("pose", "faceeval.metrics.pose:PoseMetric",
                 description="pose error, L2 of (yaw, pitch, roll) vs target: dlib-68 + mean face + solvePnP (offline), degrees",
                 aliases=("pose_pnp",), options={"backend": "pnp", "unit": "deg"}, requires=("model_3D_68.txt",))
METRICS.register("pose_rad", "faceeval.metrics.pose:PoseMetric",
                 description="as pose, in radians", options={"backend": "pnp", "unit": "rad"}, requires=("model_3D_68.txt",))
METRICS.register("pose_hopenet", "faceeval.metrics.pose:PoseMetric",
                 description="pose error with Hopenet ResNet-50 (hopenet_robust_alpha1.pkl), degrees",
                 options={"backend": "hopenet", "unit": "deg"}, requires=("hopenet_robust_alpha1.pkl",))
METRICS.register("pose_hopenet_rad", "faceeval.metrics.pose:PoseMetric",
                 description="as pose_hopenet, in radians", options={"backend": "hopenet", "unit": "rad"},
                 requires=("hopenet_robust_alpha1.pkl",))
METRICS.register("expression", "faceeval.metrics.expression:ExpressionMetric",
                 description="expression error vs target: Procrustes-aligned inner-face dlib landmarks, % inter-ocular (offline)",
                 options={"backend": "landmarks"})
METRICS.register("expression_deep3d", "faceeval.metrics.expression:ExpressionMetric",
                 description="expression error: L2 of Deep3DFaceRecon's 64 expression coefficients vs target",
                 options={"backend": "deep3d"}, requires=("deep3dfacerecon_epoch_20.pth",))
METRICS.register("fid_facenet", "faceeval.metrics.fid:FIDMetric",
                 description="Frechet distance in FaceNet feature space vs the targets (offline; not Inception FID)",
                 options={"backend": "facenet"}, requires=("graph_final.pb",))
METRICS.register("fid", "faceeval.metrics.fid:FIDMetric",
                 description="FID: Inception-v3 (TF 2015-12-05) pool3 at 299 through torch-fidelity, vs the targets "
                             "(torch-fidelity's weight file, else `harness weights fetch fid_inception`)",
                 options={"backend": "inception"},
                 requires=("weights-inception-2015-12-05-6726825d.pth|" + fetch_requires("fid_inception")[0],))
METRICS.register("identity_sface", "faceeval.metrics.identity:IdentityMetric",
                 description="ID similarity and retrieval top-1/top-5 with SFace (ArcFace-family hypersphere loss, 128-d), "
                             "RetinaFace 5-point ArcFace crop (default suite)",
                 aliases=("id_sface",), options={"backend": "sface"}, requires=ID_BACKEND_FILES["sface"])
METRICS.register("pose_whenet", "faceeval.metrics.pose:PoseMetric",
                 description="pose error, L2 of (yaw, pitch, roll) vs target: WHENet on timm tf_efficientnet_b0, "
                             "RetinaFace box, degrees (default suite)",
                 options={"backend": "whenet", "unit": "deg"}, requires=fetch_requires("whenet", "retinaface"))
METRICS.register("expression_blendshapes", "faceeval.metrics.expression:ExpressionMetric",
                 description="expression error vs target: L2 of MediaPipe's 52 blendshape scores (default suite)",
                 options={"backend": "blendshapes"}, requires=fetch_requires("face_landmarker", "retinaface"))
