"""The settings of a run are declared once (harness.settings.RunSettings): `harness run`'s
options are generated from its fields, and evaluate(), the command line and the runner's
RunConfig take their defaults from it."""

from __future__ import annotations

import inspect
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from harness import evaluation
from harness.cli import app
from harness.runner import RunConfig
from harness.settings import CLI_FIELDS, RunSettings

FIELDS = {f.name: f for f in fields(RunSettings)}


def _run_command():
    return typer.main.get_command(app).commands["run"]


def _flags(f) -> list[str]:
    return list(f.metadata["flags"]) or ["--" + f.name.replace("_", "-")]


def _default(f):
    return None if f.default is MISSING else f.default


def test_every_run_option_is_a_settings_field_with_its_default():
    params = [p for p in _run_command().params if p.name != "help"]
    by_flag = {p.opts[0]: p for p in params}
    assert len(params) == len(CLI_FIELDS)  # nothing declared beside the dataclass
    for name in CLI_FIELDS:
        f = FIELDS[name]
        param = by_flag[_flags(f)[0]]
        assert set(_flags(f)) <= set(param.opts + param.secondary_opts), name
        assert param.help == f.metadata["help"], name
        assert param.required == f.metadata["required"], name
        if not param.required:
            default = param.default
            assert (tuple(default) if isinstance(default, list) else default) == _default(f), name


def test_evaluate_takes_the_settings_as_keywords_and_hands_them_on_whole(monkeypatch):
    seen = {}
    monkeypatch.setattr(evaluation, "_evaluate", lambda run, **kw: seen.setdefault("run", run))
    evaluation.evaluate("demo", ["source"], seed=3, workers=1)
    assert seen["run"] == RunSettings(protocol="demo", methods=("source",), seed=3, workers=1)
    # evaluate declares no default of its own: only protocol, methods, log and the settings
    params = inspect.signature(evaluation.evaluate).parameters
    assert list(params) == ["protocol", "methods", "log", "settings"]


def test_an_unknown_keyword_names_the_closest_setting():
    with pytest.raises(TypeError, match="unexpected keyword argument 'batchsize'; did you mean 'batch_size'"):
        evaluation.evaluate("demo", ["source"], batchsize=4)
    with pytest.raises(TypeError, match="'protocol'"):
        evaluation.evaluate("demo", ["source"], protocol="demo")


def test_the_command_line_passes_the_settings_to_evaluate(monkeypatch, tmp_path):
    seen = {}

    def fake(protocol, methods, *, log, **settings):
        seen.update(protocol=protocol, methods=methods, **settings)
        raise evaluation.HarnessError("stop here")

    monkeypatch.setattr(evaluation, "evaluate", fake)
    res = CliRunner().invoke(app, ["run", "-p", "demo", "-m", "source", "-m", "target", "--option", "a=1",
                                   "--search", str(tmp_path), "--out", str(tmp_path / "out"), "--batch-size", "4"])
    assert isinstance(res.exception, evaluation.HarnessError)
    expected = RunSettings(protocol="demo", methods=("source", "target"), options=("a=1",),
                           weights_search=(tmp_path,), out=tmp_path / "out", batch_size=4, progress=False)
    assert RunSettings(**seen) == expected


def test_the_runner_config_shares_the_defaults():
    for name in ("batch_size", "save_images", "progress", "on_error", "cached_swaps_only"):
        assert getattr(RunConfig(out_dir=Path(".")), name) == FIELDS[name].default, name
    assert RunSettings.device == "auto"  # resolved by RunConfig
    assert RunConfig(out_dir=Path("."), device="cpu").device == "cpu"
