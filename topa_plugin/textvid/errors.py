"""The error of TextVid generation's own input: source, prompt template, output file, options."""

from __future__ import annotations

from topa_plugin.utils.errors import TopaInputError


class GenerationError(TopaInputError, ValueError):
    """Bad generation input (source, template, output file), named in the message."""
