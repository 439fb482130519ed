"""medisee.data: datasets for medical reasoning segmentation and detection.

Importing the package does no work; import the submodules you need:

- :mod:`medisee.data.schema`: ``Record``/``Target``/``QAItem``/``Turn``, ``SkipReport``,
  the coordinate and display conventions;
- :mod:`medisee.data.io`: ``read_image`` (PNG/JPEG/TIFF, DICOM with windowing, NIfTI
  slices in RAS+ radiological display), ``load_volume``, window presets;
- :mod:`medisee.data.masks`: COCO RLE and PNG masks;
- :mod:`medisee.data.manifest`: ``read_manifest`` with counted skips;
- :mod:`medisee.data.samples`: ``flatten``/``Sample``/``ManifestDataset`` for training;
- :mod:`medisee.data.ontology`, :mod:`medisee.data.qa_template`,
  :mod:`medisee.data.qa_llm`: QA generation;
- :mod:`medisee.data.sources`: builders (bundled, folder, SA-Med2D, NIfTI);
- :mod:`medisee.data.phantom`, :mod:`medisee.data.splits`, :mod:`medisee.data.stats`.

See ``docs/data.md``.
"""
