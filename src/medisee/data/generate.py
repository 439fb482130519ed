"""QA generation over an existing manifest (``medisee data generate``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from medisee.data.masks import MaskError
from medisee.data.ontology import Ontology
from medisee.data.qa_template import TemplateEngine
from medisee.data.samples import load_target_mask
from medisee.data.schema import Record, SkipReport


def apply_template(
    records: Sequence[Record],
    root: str | os.PathLike[str],
    *,
    seed: int = 0,
    ontology: Ontology | None = None,
    conversation: bool = True,
) -> SkipReport:
    """(Re)generate template QA in place: each target's ``engine == "template"`` items and
    the record's conversation are replaced; other items (LLM, human) are kept. Records
    whose masks cannot be read keep their QA and are counted."""
    engine = TemplateEngine(ontology, seed=seed, conversation=conversation)
    report = SkipReport()
    root = Path(root)
    for record in records:
        try:
            masks = [load_target_mask(record, target, root) for target in record.targets]
        except (MaskError, FileNotFoundError) as error:
            report.add("mask unreadable", record.id, str(error))
            continue
        result = engine.generate(record, masks)
        for target, items in zip(record.targets, result.qa):
            target.qa = [item for item in target.qa if item.engine != "template"] + items
        record.conversation = result.conversation
        report.merge(result.report)
    return report
