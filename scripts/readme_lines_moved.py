"""Check that a README split into docs/ pages lost nothing: every non-blank line of the README
at REV appears in a docs page or CHANGELOG.md, either as it was or with only its links, quotes,
heading level, indentation or line wrapping changed. Lists the lines that do not, and says
which of them the current README keeps as they were.

    python scripts/readme_lines_moved.py 0e89bed      # the README before issue 25's split
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def normalise(text: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)   # [text](target) -> text
    text = re.sub(r"^\s*#+\s*", "", text, flags=re.MULTILINE)  # heading marks
    text = text.replace('"', "")
    return re.sub(r"\s+", " ", text).strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", help="the commit whose README.md is checked")
    args = ap.parse_args()
    old = subprocess.run(["git", "show", f"{args.rev}:README.md"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    pages = sorted((REPO / "docs").glob("*.md")) + [p for p in [REPO / "CHANGELOG.md"] if p.is_file()]
    texts = [p.read_text(encoding="utf-8") for p in pages]
    exact = {line.strip() for t in texts for line in t.splitlines()}
    joined = " ".join(normalise(t) for t in texts)
    readme = {line.strip() for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines()}
    lines = [(i, line) for i, line in enumerate(old, 1) if line.strip()]
    as_is = edited = 0
    missing = []
    for i, line in lines:
        if line.strip() in exact:
            as_is += 1
        elif normalise(line) in joined:
            edited += 1
        else:
            missing.append((i, line))
    print(f"{len(lines)} non-blank lines in {args.rev}:README.md: {as_is} in a page as they were, "
          f"{edited} with links/quotes/headings/wrapping changed, {len(missing)} in no page")
    for i, line in missing:
        kept = "kept in README.md" if line.strip() in readme else "rewritten"
        print(f"  {i:5d} [{kept}] {line.strip()[:110]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
