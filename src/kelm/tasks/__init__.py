"""The task registry: a ``[task]`` table names a task and holds that task's settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError, create_model

from kelm.config import Section, format_validation_error
from kelm.errors import ConfigError
from kelm.tasks.base import Task

DEFAULT_TASK = "causal-lm"


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its config model and a factory taking a validated config."""

    config: type[Section]
    factory: Callable[[Any], Task]

    @property
    def train_defaults(self) -> dict[str, Any]:
        """The task family's ``[train]`` defaults (`Task.train_defaults`), applied under the run's config."""
        return dict(getattr(self.factory, "train_defaults", {}))


def _causal_lm() -> TaskSpec:
    from kelm.tasks.causal_lm import CausalLMConfig, CausalLMTask

    return TaskSpec(CausalLMConfig, CausalLMTask)


def _link_prediction() -> TaskSpec:
    from kelm.tasks.link_prediction import LinkPredictionConfig, LinkPredictionTask

    return TaskSpec(LinkPredictionConfig, LinkPredictionTask)


def _classification() -> TaskSpec:
    from kelm.tasks.classification import ClassificationConfig, ClassificationTask

    return TaskSpec(ClassificationConfig, ClassificationTask)


def _ner() -> TaskSpec:
    from kelm.tasks.ner import NERConfig, NERTask

    return TaskSpec(NERConfig, NERTask)


def _qa() -> TaskSpec:
    from kelm.tasks.qa import QAConfig, QATask

    return TaskSpec(QAConfig, QATask)


def _pretrain() -> TaskSpec:
    from kelm.tasks.pretrain import PretrainConfig, PretrainTask

    return TaskSpec(PretrainConfig, PretrainTask)


def _kgqa() -> TaskSpec:
    from kelm.tasks.kgqa import KGQAConfig, KGQATask

    return TaskSpec(KGQAConfig, KGQATask)


def _text_kgc() -> TaskSpec:
    from kelm.tasks.text_kgc import TextKGCConfig, TextKGCTask

    return TaskSpec(TextKGCConfig, TextKGCTask)


def _frozen_text_kgc() -> TaskSpec:
    from kelm.tasks.frozen_text_kgc import FrozenTextKGCConfig, FrozenTextKGCTask

    return TaskSpec(FrozenTextKGCConfig, FrozenTextKGCTask)


def _kg_enhanced() -> TaskSpec:
    from kelm.tasks.kg_enhanced import KGEnhancedConfig, KGEnhancedTask

    return TaskSpec(KGEnhancedConfig, KGEnhancedTask)


#: Task name → a loader of its spec (imported on first use).
TASKS: dict[str, Callable[[], TaskSpec]] = {"causal-lm": _causal_lm, "link-prediction": _link_prediction}
TASKS["classification"] = _classification
TASKS["ner"] = _ner
TASKS["qa"] = _qa
TASKS["mlm"] = TASKS["clm"] = _pretrain
TASKS["kgqa"] = _kgqa
TASKS["kg-enhanced-classification"] = _kg_enhanced
TASKS["text-kgc"] = _text_kgc
TASKS["frozen-text-kgc"] = _frozen_text_kgc


def task_train_defaults(name: str) -> dict[str, Any]:
    """The ``[train]`` defaults of the task ``name``; {} for an unknown name (validation reports it)."""
    return TASKS[name]().train_defaults if name in TASKS else {}


def task_names() -> list[str]:
    return sorted(TASKS)


def validate_task(section: dict[str, Any], source: str = "config") -> tuple[TaskSpec, Section]:
    """Check a ``[task]`` table against its task's config model; errors name ``task.<key>``."""
    section = dict(section)
    name = section.setdefault("name", DEFAULT_TASK)
    if name not in TASKS:
        raise ConfigError(f"{source}: task.name: unknown task '{name}' (known: {', '.join(task_names())})")
    spec = TASKS[name]()
    wrapper = create_model("TaskTable", __base__=Section, task=(spec.config, ...))
    try:
        cfg = wrapper.model_validate({"task": section}).task  # type: ignore[attr-defined]
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None
    if "text" in spec.config.model_fields and not cfg.text:
        raise ConfigError(f"{source}: task.text: no text files given (set task.text or pass --text FILE)")
    return spec, cfg


def build_task(task_section: dict[str, Any], source: str = "config") -> Task:
    """The task a ``[task]`` table describes (``name`` defaults to ``causal-lm``)."""
    spec, cfg = validate_task(task_section, source)
    return spec.factory(cfg)


__all__ = ["TASKS", "Task", "TaskSpec", "build_task", "task_names", "task_train_defaults", "validate_task"]
