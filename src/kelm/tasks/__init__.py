"""The task registry: a ``[task]`` table names a task and holds that task's settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError, create_model

from kelm.config import Section, format_validation_error
from kelm.errors import ConfigError
from kelm.registry import Registry
from kelm.train.task import Task

DEFAULT_TASK = "causal-lm"


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its config model and a factory taking a validated config."""

    config: type[Section]
    factory: Callable[[Any], Task]

    @property
    def train_defaults(self) -> dict[str, Any]:
        """The task family's ``[train]`` defaults (`Task.train_defaults`), applied under the run's config."""
        return dict(self.factory.train_defaults)


#: Task name → its `Task` class (whose ``config_class`` validates the ``[task]`` table).
TASKS: Registry[type[Task]] = Registry(
    "task",
    {
        "causal-lm": "kelm.tasks.causal_lm:CausalLMTask",
        "link-prediction": "kelm.tasks.link_prediction:LinkPredictionTask",
        "classification": "kelm.tasks.classification:ClassificationTask",
        "ner": "kelm.tasks.ner:NERTask",
        "qa": "kelm.tasks.qa:QATask",
        "mlm": "kelm.tasks.pretrain:PretrainTask",
        "clm": "kelm.tasks.pretrain:PretrainTask",
        "kgqa": "kelm.tasks.kgqa:KGQATask",
        "kg-enhanced-classification": "kelm.tasks.kg_enhanced:KGEnhancedTask",
        "text-kgc": "kelm.tasks.text_kgc:TextKGCTask",
        "frozen-text-kgc": "kelm.tasks.frozen_text_kgc:FrozenTextKGCTask",
        "extraction": "kelm.tasks.extraction:ExtractionTask",
        "distill": "kelm.tasks.distill:DistillTask",
    },
)


def task_spec(name: str, field: str = "task.name") -> TaskSpec:
    """The config model and factory of a registered task (imported on first use)."""
    cls = TASKS.get(name, field)
    return TaskSpec(cls.config_class, cls)


def task_train_defaults(name: str) -> dict[str, Any]:
    """The ``[train]`` defaults of the task ``name``; {} for an unknown name (validation reports it)."""
    return task_spec(name).train_defaults if name in TASKS else {}


def task_names() -> list[str]:
    return TASKS.names()


def validate_task(section: dict[str, Any], source: str = "config") -> tuple[TaskSpec, Section]:
    """Check a ``[task]`` table against its task's config model; errors name ``task.<key>``."""
    section = dict(section)
    name = section.setdefault("name", DEFAULT_TASK)
    if name not in TASKS:
        raise ConfigError(f"{source}: task.name: unknown task '{name}' (known: {', '.join(task_names())})")
    spec = task_spec(name)
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


__all__ = ["TASKS", "Task", "TaskSpec", "build_task", "task_names", "task_spec", "task_train_defaults", "validate_task"]
