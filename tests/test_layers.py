"""The package's layers import downward only: no circle, no upward arrow outside the allow-list below."""

from __future__ import annotations

from tests.helpers.import_graph import LAYERS, LAYOUT, PACKAGE, circles, layer_arrows, layer_of, updated_layout, upward

# (from layer, to layer): why the arrow is right. Empty today; add an entry only with its reason.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def test_no_upward_imports_between_layers():
    found = upward(layer_arrows())
    new = {edge: sorted(why) for edge, why in found.items() if edge not in ALLOWED_UPWARD}
    assert not new, "imports from a lower layer to a higher one (move the shared piece down):\n" + "\n".join(
        f"{a} -> {b}: {why}" for (a, b), why in new.items())


def test_no_circles_between_layers():
    assert circles(layer_arrows()) == []


def test_utils_imports_no_stage():
    arrows = layer_arrows()
    assert not [edge for edge in arrows if edge[0] == "utils"], "utils is the floor: it imports no stage"


def test_every_package_folder_has_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(LAYERS), f"give these folders a place in LAYERS: {sorted(folders - set(LAYERS))}"
    assert layer_of("topa_plugin.modeling") == "core" and layer_of("topa_plugin") == "api"


def test_the_graph_sees_lazy_imports(tmp_path):
    """An import inside a function counts: a lazy upward import is still an arrow."""
    package = tmp_path / "topa_plugin"
    (package / "utils").mkdir(parents=True)
    (package / "features").mkdir()
    for folder in (package, package / "utils", package / "features"):
        (folder / "__init__.py").write_text("")
    (package / "utils" / "a.py").write_text("def f():\n    from topa_plugin.features import b\n")
    (package / "features" / "b.py").write_text("from topa_plugin.utils import a\n")
    arrows = layer_arrows(package)
    assert set(upward(arrows)) == {("utils", "features")}
    assert circles(arrows) == [["utils", "features"]]


def test_the_layout_page_draws_the_real_graph():
    text = LAYOUT.read_text(encoding="utf-8")
    assert updated_layout(text) == text, "run: python -m tests.helpers.import_graph --update-docs"
