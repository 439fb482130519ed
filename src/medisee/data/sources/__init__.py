"""Dataset builders, one module per source: ``bundled``, ``folder``, ``samed2d``, ``nifti``."""
