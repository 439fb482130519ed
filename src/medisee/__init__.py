"""medisee: medical reasoning segmentation and detection.

Importing the package does no work: submodules are imported on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"
