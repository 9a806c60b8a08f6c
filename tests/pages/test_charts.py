import base64
import xml.etree.ElementTree as ET

import numpy as np

from topa_plugin.pages import charts
from topa_plugin.pages.images import thumbnail_uri


def _svg(uri: str) -> str:
    prefix = "data:image/svg+xml;base64,"
    assert uri.startswith(prefix)
    return base64.b64decode(uri[len(prefix):]).decode()


def test_option_scores_is_valid_svg_with_escaped_labels():
    svg = _svg(charts.option_scores(["<b>milk</b> & bread", "closes it"], [1.5, 2.25], chosen=0, correct=1))
    root = ET.fromstring(svg)  # well-formed: labels were escaped
    text = "".join(root.itertext())
    assert "<b>milk</b> & bread (chosen)" in text and "closes it (correct)" in text


def test_bars_and_histogram_name_their_series():
    text = "".join(ET.fromstring(_svg(charts.bars(["A", "B"], {"run 1": [3, 4], "run 2": [5, 1]}))).itertext())
    assert "run 1" in text and "run 2" in text
    text = "".join(ET.fromstring(_svg(charts.histogram({"x": [1, 2, 2, 3]}, xlabel="words"))).itertext())
    assert "words" in text


def test_thumbnail_keeps_aspect_and_decodes():
    import io

    from PIL import Image

    frame = np.zeros((360, 640, 3), np.uint8)
    frame[:, :320] = 255
    uri = thumbnail_uri(frame, side=160)
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert image.size == (160, 90)
    pixels = np.asarray(image.convert("RGB"))
    assert pixels[:, :70].mean() > 240 and pixels[:, 90:].mean() < 15
