"""Reference 'methods' that bound every table: no swap at all.

* ``source`` returns the source face: perfect identity, wrong pose/expression/background
  (the identity upper bound).
* ``target`` returns the target face: perfect attributes, wrong identity (the lower bound).
"""

from __future__ import annotations

from faceeval.api import SwapMethod


class SourceMethod(SwapMethod):
    name = "source"

    def swap(self, source, target):
        return source.clone()


class TargetMethod(SwapMethod):
    name = "target"

    def swap(self, source, target):
        return target.clone()
