"""MkDocs hook: publish the repository images that pages show from outside docs/.

`docs/performance.md` shows `../benchmarks/results.png`, a path that works on GitHub and in
an editor. MkDocs publishes only what is under docs/, so the link would break the site: this
hook copies each such image (one that exists, under the repository root) to `_repo/<path>`
in the site and points the page's link there. Missing images are left alone, so that
`mkdocs build --strict` still reports them.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

_IMAGE = re.compile(r"(!\[[^\]]*\]\()(\.\./[^)\s]+\.(?:png|svg|jpe?g|gif|webp))(\s*\))")
_PREFIX = "_repo"


def _outside_image(docs: Path, page_dir: Path, link: str) -> str | None:
    """The image's path relative to the repository root, if it lives outside docs/."""
    target = (page_dir / link).resolve()
    root = docs.parent
    if docs in target.parents or root not in target.parents or not target.is_file():
        return None
    return target.relative_to(root).as_posix()


def on_files(files: Files, config: Any) -> Files:
    docs = Path(config["docs_dir"]).resolve()
    for page in docs.rglob("*.md"):
        for match in _IMAGE.finditer(page.read_text(encoding="utf-8")):
            relative = _outside_image(docs, page.parent, match.group(2))
            if relative is None or files.get_file_from_path(f"{_PREFIX}/{relative}"):
                continue
            source = str(docs.parent / relative)
            files.append(File.generated(config, f"{_PREFIX}/{relative}", abs_src_path=source))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    docs = Path(config["docs_dir"]).resolve()
    page_dir = (docs / page.file.src_uri).parent

    def relink(match: re.Match[str]) -> str:
        relative = _outside_image(docs, page_dir, match.group(2))
        if relative is None:
            return match.group(0)
        start = posixpath.dirname(page.file.src_uri) or "."
        link = posixpath.relpath(f"{_PREFIX}/{relative}", start)
        return f"{match.group(1)}{link}{match.group(3)}"

    return _IMAGE.sub(relink, markdown)
