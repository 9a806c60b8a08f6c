"""Video frames as small JPEG data URIs, so a page carries its thumbnails inside itself."""

from __future__ import annotations

import base64
import io

import numpy as np

THUMBNAIL_SIDE = 224  # longest side of a thumbnail, in pixels
JPEG_QUALITY = 80


def thumbnail_uri(frame: np.ndarray, side: int = THUMBNAIL_SIDE) -> str:
    """``data:image/jpeg;base64,...`` of a uint8 [H, W, 3] frame, scaled so its longest side is ``side``."""
    from PIL import Image

    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, 3] frame, got {frame.dtype} {list(frame.shape)}")
    image = Image.fromarray(frame)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
