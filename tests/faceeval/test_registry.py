"""The one registry mechanism: lazy entries, aliases, suggestions, entry-point plugins."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from faceeval.errors import HarnessError
from faceeval.registry import Registry
from harness.registry import METHODS, METRICS, PROTOCOLS


def test_listing_does_not_import_torch_or_backends():
    code = textwrap.dedent("""
        import sys
        from harness.registry import METHODS, PROTOCOLS, METRICS
        names = METHODS.names() + PROTOCOLS.names() + METRICS.names()
        heavy = [m for m in ("torch", "dlib", "mlflow", "cv2", "onnxruntime") if m in sys.modules]
        print(len(names), heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    count, heavy = out.split(" ", 1)
    assert int(count) >= 5
    assert heavy.strip() == "[]"


def test_builtin_entries_and_aliases():
    assert METHODS.names()[:2] == ["source", "target"]
    assert {"demo", "folder"} <= set(PROTOCOLS.names())
    assert METRICS.resolve("id").name == "identity"


def test_typo_gets_a_suggestion():
    with pytest.raises(HarnessError, match=r"unknown method 'sorce'; did you mean 'source'\?"):
        METHODS.resolve("sorce")


def test_registration_is_validated_when_made():
    r = Registry("thing", "codeswap_harness.tests_none")
    r.register("a", "pkg.mod:A", aliases=("x",))
    with pytest.raises(ValueError, match="twice"):
        r.register("x", "pkg.mod:B")
    with pytest.raises(ValueError, match="package.module:Object"):
        r.register("b", "pkg.mod.B")
    with pytest.raises(ValueError, match="invalid"):
        r.register("bad name", "pkg.mod:B")


def test_unimportable_entry_is_a_clear_error():
    r = Registry("thing", "codeswap_harness.tests_none")
    r.register("ghost", "no_such_module_xyz:Thing")
    with pytest.raises(HarnessError, match="ghost: cannot import no_such_module_xyz"):
        r.create("ghost")


def test_entry_point_plugin_is_discovered(tmp_path):
    """A distribution on sys.path that declares the entry-point group adds a method."""
    (tmp_path / "my_swapper.py").write_text(textwrap.dedent("""
        from faceeval.api import SwapMethod
        class Mirror(SwapMethod):
            name = "mirror"
            def swap(self, source, target):
                return target.flip(-1)
    """))
    dist = tmp_path / "my_swapper-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-swapper\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[codeswap_harness.methods]\nmirror = my_swapper:Mirror\n")
    code = textwrap.dedent("""
        import torch
        from harness.registry import METHODS
        e = METHODS.resolve("mirror")
        m = e.create()
        x = torch.arange(4.0).reshape(1, 1, 2, 2).expand(1, 3, 2, 2)
        print(e.origin, m.swap(x, x)[0, 0].tolist())
    """)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "my-swapper [[1.0, 0.0], [3.0, 2.0]]"


def test_entry_of_the_wrong_kind_is_refused_when_it_loads():
    r = Registry("method", "codeswap_harness.tests_none", "faceeval.api:SwapMethod")
    r.register("metricish", "faceeval.metrics.identity:IdentityMetric")
    with pytest.raises(HarnessError, match=r"method 'metricish': faceeval.metrics.identity:IdentityMetric is not a "
                                           r"subclass of faceeval.api.SwapMethod"):
        r.create("metricish")


def test_settings_are_checked_and_converted_once_at_creation():
    with pytest.raises(HarnessError, match=r"^unknown setting 'unti' for metric 'pose'; did you mean 'unit'\?$"):
        METRICS.create("pose", unti="rad")
    with pytest.raises(HarnessError, match=r"unknown setting 'num_pair' for protocol 'demo'; did you mean 'num_pairs'"):
        PROTOCOLS.create("demo", num_pair="2")
    with pytest.raises(HarnessError, match=r"unknown setting 'foo' for method 'source' \(known: device\)"):
        METHODS.create("source", foo="1")
    assert PROTOCOLS.create("demo", num_pairs="3").num_pairs == 3  # text from the command line -> int
    assert {"num_identities", "strict"} <= set(PROTOCOLS.resolve("celebahq").load().settings())  # its --options
    classical = METHODS.create("classical", erode_px="5", detect="off")  # settings of its OPTIONS dataclass
    assert (classical.config.erode_px, classical.config.detect) == (5, False)
    with pytest.raises(HarnessError, match="setting 'erode_px' for method 'classical' must be an integer, got 'x'"):
        METHODS.create("classical", erode_px="x")
    with pytest.raises(HarnessError, match="setting 'detect' for method 'classical' must be true or false"):
        METHODS.create("classical", detect="maybe")


def test_method_tables_derive_the_registrations():
    """Variants, releases and weight files are listed once, in the methods' own tables."""
    from codeswap.variants import VARIANTS
    from faceeval.weights import DLIB_68, KNOWN
    from methods.simswap import RELEASES

    codeswap = [e for e in METHODS.entries() if e.target == "methods.codeswap:CodeSwapMethod"]
    assert [dict(e.options).get("variant", "full") for e in codeswap] == list(VARIANTS)
    for name, release in RELEASES.items():
        assert set(METHODS.resolve(name).requires) == {*release.weight_files, DLIB_68}
    for registry in (METHODS, METRICS):
        for e in registry.entries():
            # every required file is a known weight file ("a|b": either of two files)
            assert {f for r in e.requires for f in r.split("|")} <= set(KNOWN), e.name


def test_either_of_two_weight_files_satisfies_an_alternative(tmp_path, monkeypatch, evaluator_file):
    """FID runs on torch-fidelity's own Inception file or on the one fetched from a package."""
    from faceeval.registry import Entry

    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HARNESS_WEIGHTS_SEARCH", "")
    e = Entry("fid_test", "faceeval.metrics.fid:FIDMetric", requires=(
        "weights-inception-2015-12-05-6726825d.pth|fid_helper_inception_2015_12_05.pt",))
    problems = e.weight_problems()
    assert list(problems) == ["fid_helper_inception_2015_12_05.pt"]  # the last alternative: it names the fetch
    assert "harness weights fetch fid_inception" in str(problems["fid_helper_inception_2015_12_05.pt"])
    (tmp_path / "weights-inception-2015-12-05-6726825d.pth").write_bytes(b"x")  # prefix-pinned: refused
    assert list(e.weight_problems()) == ["fid_helper_inception_2015_12_05.pt"]
    shipped = evaluator_file("fid_inception").parent / "fid_helper_inception_2015_12_05.pt"
    (tmp_path / shipped.name).symlink_to(shipped)  # the second alternative, sha256 checked
    assert e.weight_problems() == {}

