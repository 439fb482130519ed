"""The readers' refusal, shared by ``medisee.data.io`` and ``medisee.data.dicom_series``
(``io`` reads a series through ``dicom_series``, which raises it: it lives apart so that
neither imports the other to name it)."""

from __future__ import annotations


class ImageReadError(ValueError):
    """A file that cannot be read as an image (corrupt, truncated, unsupported)."""
