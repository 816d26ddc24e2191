"""The whole kelm config file: every section, each optional; each command reads the ones it needs."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from kelm.app.federate.config import FederateConfig
from kelm.config import DataConfig, Section, StoreConfig
from kelm.train.config import TrainConfig


class KelmConfig(Section):
    """A whole kelm config file. Every section is optional; each command reads the ones it needs."""

    store: StoreConfig = Field(default_factory=StoreConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    federate: FederateConfig = Field(default_factory=FederateConfig)
    # Free-form here; `kelm.tasks.validate_task` checks it against the named task's own model.
    task: dict[str, Any] = Field(default_factory=dict)
