"""mkdocs hook (mkdocs.yml `hooks:`): README.md is the documentation site's home page.

README.md stays at the repository root, where GitHub shows it, and links into the docs as
`docs/PAGE.md#anchor`; a docs page links back to it as `../README.md#anchor`. This hook adds
README.md to the build as `index.md` with the `docs/` prefix of its links removed, and maps the
pages' links to README.md onto `index.md`, so that mkdocs' own validation (mkdocs.yml:
`validation`, `strict: true`) checks README's links and anchors like any page's. A README link
that is neither into docs/ nor absolute cannot be served by the site: it is a warning, so a
strict build fails on it.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.readme_index")

# inline links and images `](target` and reference definitions `[name]: target`
_LINK = re.compile(r"(\]\(<?|^ {0,3}\[[^\]]+\]:[ \t]*<?)([^)\s>]+)", re.MULTILINE)
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_ABSOLUTE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*:|//|#)")


def _outside_fences(text: str, fn) -> str:
    """Apply fn to the lines outside fenced code blocks."""
    out, fence = [], None
    for line in text.splitlines(keepends=True):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            out.append(line)
        elif fence is not None:
            if line.lstrip().startswith(fence):
                fence = None
            out.append(line)
        else:
            out.append(fn(line))
    return "".join(out)


def readme_as_index(text: str, docs_dir: str = "docs") -> str:
    """README.md's text as the site's index.md: links into docs/ made relative to it."""
    prefix = docs_dir.rstrip("/") + "/"

    def link(m: re.Match) -> str:
        target = m.group(2)
        if _ABSOLUTE.match(target):
            return m.group(0)
        if target.startswith(prefix):
            return m.group(1) + target[len(prefix):]
        log.warning(
            "README.md links to '%s', which is outside %s: the site cannot serve it; "
            "link to a page under %s or use an absolute URL", target, prefix, prefix)
        return m.group(0)

    return _outside_fences(text, lambda line: _LINK.sub(link, line))


def on_files(files, config):
    root = Path(config.config_file_path).parent
    if files.get_file_from_path("index.md") is not None:
        log.warning("docs/index.md exists: README.md is the site's index page, remove one of them")
        return files
    docs_dir = Path(config.docs_dir).relative_to(root).as_posix()
    text = readme_as_index((root / "README.md").read_text(encoding="utf-8"), docs_dir)
    files.append(File.generated(config, "index.md", content=text))
    return files


def on_page_markdown(markdown, page, config, files):
    """A page's link to README.md (`../README.md#commands`) goes to index.md in the site."""
    root = Path(config.config_file_path).parent
    docs_dir = Path(config.docs_dir).relative_to(root).as_posix()
    if page.file.src_uri == "index.md":
        return markdown
    page_dir = posixpath.dirname(posixpath.join(docs_dir, page.file.src_uri))
    to_index = posixpath.relpath("index.md", posixpath.dirname(page.file.src_uri) or ".")

    def link(m: re.Match) -> str:
        target = m.group(2)
        if _ABSOLUTE.match(target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        if path and posixpath.normpath(posixpath.join(page_dir, path)) == "README.md":
            return m.group(1) + to_index + ("#" + anchor if anchor else "")
        return m.group(0)

    return _outside_fences(markdown, lambda line: _LINK.sub(link, line))
