"""Render a page from the package's Jinja2 templates and write it where the user asked.

Autoescaping is on for every template, so text from questions, options, captions and file names shows as
text; data handed to a page's script goes through Jinja2's ``tojson`` filter, which escapes ``<``, ``>``,
``&`` and quotes for use inside ``<script>``. Undefined names fail instead of rendering as blanks."""

from __future__ import annotations

import functools
from pathlib import Path

from topa_plugin.utils.atomic import atomic_write
from topa_plugin.utils.errors import TopaInputError
from topa_plugin.version import __version__


class PageError(TopaInputError, ValueError):
    """A page that cannot be written where the user asked; the message names the path."""


@functools.lru_cache(maxsize=1)
def environment():
    """The one Jinja2 environment of the package's templates (``topa_plugin/pages/templates``)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("topa_plugin.pages", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **context) -> str:
    """The HTML of ``template`` (a file in ``templates/``) filled with ``context`` and the package ``version``."""
    return environment().get_template(template).render(version=__version__, **context)


def check_page_path(path: str | Path) -> Path:
    """``path`` as the file a page goes to: its folder must exist and it may not be a folder itself.

    Called before any long work, so a typo in ``--report``/``--out`` fails at once, not after a run."""
    path = Path(path)
    if path.is_dir():
        raise PageError(f"{path}: is a folder; give the path of an .html file")
    if not path.parent.is_dir():
        raise PageError(f"{path}: folder {path.parent} does not exist")
    return path


def write_page(path: str | Path, html: str) -> Path:
    """Write ``html`` to ``path`` atomically (a reader never sees half a page); returns the path."""
    path = check_page_path(path)
    return atomic_write(path, lambda tmp: tmp.write_text(html, encoding="utf-8"))
