"""Helpers shared by the protocol tests: damaged copies of fixture trees and their problems."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from protocols.base import LayoutError


def broken_copy(tree, tmp_path: Path) -> Path:
    """A writable copy of a fixture tree, to damage in a test."""
    root = tmp_path / "broken"
    shutil.copytree(tree.root, root)
    return root


def layout_problems(protocol_cls, root: Path, **kw) -> list[str]:
    """Every problem ``validate()`` lists for ``root``; the CLI message must be one line."""
    with pytest.raises(LayoutError) as info:
        protocol_cls(root=root, cache_dir=root.parent / "cache", **kw).validate()
    assert "\n" not in str(info.value)
    return info.value.problems
