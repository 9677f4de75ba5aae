"""Facts several layers share, kept in one place (import them from here)."""

from __future__ import annotations

from pathlib import Path

#: The bundled demo faces (listed in faces.json): the `demo` protocol's images and the data
#: the CodeSwap demo model trains on.
DEMO_DIR = Path(__file__).resolve().parents[1] / "protocols" / "demo_faces"
