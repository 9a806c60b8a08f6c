import pytest

from topa_plugin.pages.render import PageError, check_page_path, render, write_page


def test_text_is_escaped(tmp_path):
    html = render("base.html.j2", title='<script>alert("x")</script>')
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html


def test_undefined_names_fail():
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        render("base.html.j2")


def test_page_path_errors_name_the_path(tmp_path):
    with pytest.raises(PageError, match="does not exist"):
        check_page_path(tmp_path / "missing" / "page.html")
    with pytest.raises(PageError, match="is a folder"):
        check_page_path(tmp_path)


def test_write_page_is_complete(tmp_path):
    path = write_page(tmp_path / "page.html", "<p>ok</p>")
    assert path.read_text() == "<p>ok</p>"
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]
