"""The settings of one evaluation, declared once: :class:`RunSettings`.

Each field is a :func:`faceeval.options.setting` (default, help, option names, lower bound):
``harness run`` builds its options from these fields (:func:`codeswap.cli.with_settings`),
:func:`harness.evaluation.evaluate` takes them as keywords and hands the whole object on, so
a default cannot differ between the command line, the Python API and the run.

Example:
    >>> from harness.settings import RunSettings
    >>> RunSettings(protocol="demo", methods=("source",)).batch_size
    16
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from faceeval.options import setting, suggest

DEFAULT_OUT = Path("harness-out")

#: a protocol setting ``key=value`` (the command line) or a mapping key -> value (Python)
Pairs = tuple[str, ...] | Mapping[str, Any]


@dataclass(frozen=True)
class RunSettings:
    """What one ``harness run`` / :func:`~harness.evaluation.evaluate` call is told. The
    fields without :func:`setting` are for Python callers only (``harness report
    --conventions``); every other field is one ``harness run`` option."""

    protocol: str = setting(MISSING, "Pair-set protocol (see `harness list protocols`).", flag=("--protocol", "-p"),
                            required=True)
    methods: tuple[str, ...] = setting((), "Method name; repeat, or 'all'.", flag=("--method", "-m"))
    #: metric names with optional settings: ``"pose:unit=rad"`` items, or a mapping name -> settings
    metrics: Pairs | None = setting(
        (), "Metric name, optionally with settings (pose:unit=rad, identity_arcface:detector=scrfd); repeat. "
        "Default: identity_sface, pose_whenet, expression_blendshapes, fid (`harness weights fetch all`).",
        flag="--metric")
    root: Path | None = setting(None, "Dataset root (folder, celebahq, ffpp).")
    seed: int = setting(0, "Seed for the pair set and the bootstrap.")
    num_pairs: int | None = setting(None, "Number of pairs (default: the protocol's).")
    #: the protocol's settings: ``key=value`` items or a mapping
    options: Pairs | None = setting((), "Extra protocol setting key=value; repeat.", flag="--option")
    #: settings by method: ``METHOD.key=value`` / ``key=value`` items, or ``{method or "*": {key: value}}``
    method_options: Pairs | None = setting(
        (), "Method constructor option METHOD.key=value (or key=value for every method); repeat.",
        flag="--method-option")
    out: Path = setting(DEFAULT_OUT, "Output folder: cache, runs, report, MLflow store.", flag=("--out", "-o"))
    device: str = setting("auto", "cpu, cuda, cuda:N or auto.")
    batch_size: int = setting(16, "Pairs per batch a method swaps and the metrics score.", min=1)
    save_images: bool = setting(False, "Also write swapped crops to the run folder.")
    tracking_uri: str | None = setting(None, "MLflow tracking URI (default: SQLite in --out).")
    mlflow: bool = setting(True, "Log to MLflow.")
    report: bool = setting(True, "Render the report after the run.")
    progress: bool = setting(True, "Show progress bars.")
    weights_dir: Path | None = setting(None, "Folder of weight files (overrides $HARNESS_WEIGHTS_DIR).",
                                          flag="--weights-dir")
    weights_search: tuple[Path, ...] = setting(
        (), "Extra folder to find weight files in, flat or in insightface/facefusion/torch-hub/face-parsing layout "
        "(also $HARNESS_WEIGHTS_SEARCH); repeat.", flag=("--weights-search", "--search"))
    workers: int | None = setting(
        None, "Processes for the CPU-bound stages (decoding, detection, landmarks, alignment, classical swaps); "
        "default: the cores available, shared among this machine's torchrun ranks. Results do not depend on it.",
        min=1)
    on_error: str = setting(
        "stop", "A method failing on a pair (it raises, or its output is None, numpy, not float or outside [0, 1]): "
        "'stop' the run with one line naming method, pair and error (finished swaps stay cached), or 'skip' the "
        "pair (counted, listed in the summary, left out of every number).", flag="--on-error")
    convention: str | None = setting(
        None, "Evaluate as one codebase does, every choice at once: reliableswap, reface, facedancer, codeswap "
        "(docs/conventions.md). --metric adds metrics; a contradicting --option is an error.", flag="--convention")
    allow_substitute: bool = setting(
        False, "With --convention: run the default suite's network of the same kind for one whose weights are not "
        "here (every table says so).", flag="--allow-substitute")
    #: score only: a swap not cached is an error
    cached_swaps_only: bool = False
    #: False: a convention's protocol settings are not applied (rescoring cached swaps of other pairs)
    preset_protocol: bool = True

    @classmethod
    def of(cls, protocol: str, methods: Any, **keywords: Any) -> RunSettings:
        """``evaluate``'s arguments as settings; a keyword that names no field is an error
        with the closest name."""
        names = [f.name for f in fields(cls) if f.name not in ("protocol", "methods")]
        for key in keywords:
            if key not in names:
                raise TypeError(f"evaluate() got an unexpected keyword argument {key!r}{suggest(key, names)}")
        return cls(protocol=protocol, methods=tuple(methods), **keywords)

    def keywords(self) -> dict[str, Any]:
        """The fields other than ``protocol`` and ``methods``, as ``evaluate``'s keywords."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("protocol", "methods")}


#: the fields ``harness run`` offers as options (those declared with :func:`setting`)
CLI_FIELDS = tuple(f.name for f in fields(RunSettings) if "help" in f.metadata)
