"""Knowledge distillation of a fine-tuned classifier or tagger into a smaller student, through the
one engine.

The student learns ``alpha · T² · KL(teacher ‖ student at temperature T) + (1 - alpha) · gold``,
plus, when weighted, the mean squared error of mapped hidden states and the KL of mapped attention
maps (TinyBERT, MiniLM). Students:

- ``layers``: the teacher with only some of its layers (DistilBERT's alternate-layer start);
- ``shared``: an ALBERT model whose layers share weights, started from the teacher's layers;
- any other model name or folder (``tiny-bert``, ``minilm``, a checkpoint): trained with its own
  tokenizer. Logits are then matched over the same text: per text for classification, per word
  (each word's first sub-word in either tokenization) for NER.

A KG-enhanced classifier (``kg-fusion``) teaches a plain text classifier: the teacher links each
text, reads its subgraph and fuses it into its LM; the student reads the text alone (a ``layers``
student starts from the teacher's fused LM), so what the graph adds reaches it through the
teacher's logits and inference needs no linker, graph or GNN.

Data, labels and metrics are the teacher's task's (read from the teacher's ``config.toml``), so
the student is evaluated exactly as its teacher was and exports a normal ``hf`` model folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from kelm.artifacts import CONFIG, read_model_spec
from kelm.compress.losses import attention_kl, hidden_mse, logit_kd
from kelm.compress.students import alternate_layers, keep_layers, shared_student
from kelm.config import Section, read_toml
from kelm.errors import ConfigError
from kelm.lm.batching import Samples, model_inputs
from kelm.tasks.finetune import HFTask
from kelm.train.config import FINETUNE_DEFAULTS, TrainConfig
from kelm.train.parallel import ParallelPlan
from kelm.train.task import Batch, Task

DISTILLED_HEADS = ("classification", "ner")
FUSED = "kg-enhanced-classification"
OWN_STUDENTS = ("layers", "shared")
IGNORE = -100
TEACHER = "teacher_"
DATA_FIELDS = ("dataset", "data_dir", "train", "dev", "test")


class DistillConfig(Section):
    """``[task]`` for ``distill``."""

    name: Literal["distill"] = "distill"
    teacher: str = Field(
        ..., description="run folder of a fine-tuned classification, NER or KG-enhanced classification model"
    )
    student: str = Field(
        "layers",
        description="'layers' (a subset of the teacher's layers), 'shared' (ALBERT-style cross-layer "
        "sharing) or a model with its own tokenizer (tiny-bert, minilm, a checkpoint folder)",
    )
    layers: int | list[int] = Field(3, description="student depth, or the teacher layers a 'layers' student keeps")
    groups: int = Field(1, ge=1, description="distinct weight sets of a 'shared' student")
    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the teacher's soft labels (1 - alpha: gold labels)")
    hidden_weight: float = Field(0.0, ge=0, description="weight of the hidden-state loss ('layers'/'shared' students)")
    attention_weight: float = Field(0.0, ge=0, description="weight of the attention-map loss ('layers'/'shared')")
    dataset: str | None = Field(None, description="data instead of the teacher's (same labels)")
    data_dir: str | None = None
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    # sizes of a from-scratch student (tiny-bert)
    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)


def teacher_task_table(folder: Path) -> dict[str, Any]:
    """The ``[task]`` table the teacher was trained with."""
    table = read_toml(folder / CONFIG).get("task")
    if not isinstance(table, dict) or table.get("name") not in (*DISTILLED_HEADS, FUSED):
        found = table.get("name") if isinstance(table, dict) else None
        raise ConfigError(
            f"task.teacher: {folder} was trained by task {found!r}; distill takes classification, ner and "
            f"{FUSED} models"
        )
    return dict(table)


def fused_student_table(view: Any, table: dict[str, Any]) -> dict[str, Any]:
    """The ``classification`` table over the texts and labels a KG-enhanced ``view`` read."""
    from kelm.tasks.classification import ClassificationConfig

    dumped = view.cfg.model_dump()
    student = {k: dumped[k] for k in set(ClassificationConfig.model_fields) - {"name"} if k in table}
    student |= {k: dumped[k] for k in DATA_FIELDS} | {"max_length": view.max_length}
    return {"name": "classification", **student}


class DistillTask(Task):
    config_class = DistillConfig
    name = "distill"
    train_defaults = FINETUNE_DEFAULTS

    def __init__(self, cfg: DistillConfig):
        from kelm.tasks import build_task

        self.cfg = cfg
        self.teacher_folder, spec = read_model_spec(cfg.teacher)
        self.fused = spec.get("kind") == "kg-fusion"
        if not self.fused:
            read_model_spec(cfg.teacher, "hf")  # one clear error for any other kind
        if spec.get("quantization") is not None:
            raise ConfigError(f"task.teacher: {cfg.teacher} is int8-quantized; distil from the float model")
        table = teacher_task_table(self.teacher_folder)
        table |= {k: getattr(cfg, k) for k in DATA_FIELDS if getattr(cfg, k) is not None}
        if any(getattr(cfg, k) is not None for k in DATA_FIELDS):
            table |= {k: None for k in DATA_FIELDS if getattr(cfg, k) is None and k in table and k != "data_dir"}
        table = {k: v for k, v in table.items() if v is not None}
        self.table = {k: v for k, v in table.items() if k != "model"}
        self.own = cfg.student in OWN_STUDENTS
        if (not self.own or self.fused) and (cfg.hidden_weight or cfg.attention_weight):
            raise ConfigError(
                "task.hidden_weight/attention_weight need a 'layers' or 'shared' student (same tokenizer and widths) "
                "of a plain classification or NER teacher"
            )
        self.view: HFTask | None = None
        if self.fused:  # the teacher's view: linked texts with their subgraphs
            self.view = build_task(table)  # type: ignore[assignment]
            table = fused_student_table(self.view, table)
            self.table = {k: v for k, v in table.items() if k != "model"}
        deep = bool(cfg.hidden_weight or cfg.attention_weight)
        student_table = dict(table)
        if self.own:
            student_table["model"] = table["model"] if self.fused else str(self.teacher_folder)
        else:
            student_table |= {"model": cfg.student, "max_length": None, "hidden_size": cfg.hidden_size}
            student_table |= {"num_layers": cfg.num_layers, "num_heads": cfg.num_heads}
        if deep:  # the speed-ups compute less than the full hidden states and attention maps
            student_table["short_row_attention"] = False
            if table["name"] == "classification":
                student_table["first_token_last_layer"] = False
        self.base: HFTask = build_task({k: v for k, v in student_table.items() if v is not None})  # type: ignore[assignment]
        if list(spec.get("labels", [])) != list(self.base.labels or []):
            raise ConfigError(
                f"task.teacher: the data's labels {self.base.labels} differ from the teacher's {spec.get('labels')}"
            )
        if not self.own and not self.fused:  # the same texts in the teacher's tokenization
            self.view = build_task(table | {"model": str(self.teacher_folder)})  # type: ignore[assignment]
        if self.own:
            self.base.student_transform = self._student
        self.monitor, self.monitor_mode = self.base.monitor, self.base.monitor_mode
        self.teacher: nn.Module | None = None
        self.layer_map: list[int] = []

    # -- models ---------------------------------------------------------------------------------
    def _load_teacher(self) -> nn.Module:
        from kelm.lm.hf import load_finetuned
        from kelm.train.export import load_weights

        if self.fused:
            assert self.view is not None
            teacher = load_weights(self.view.build_model(), self.teacher_folder)
        else:
            teacher, _, _ = load_finetuned(self.teacher_folder)
            if self.cfg.attention_weight:
                teacher.set_attn_implementation("eager")
        return teacher.eval().requires_grad_(False)

    def _student(self, loaded: nn.Module) -> nn.Module:
        """The student made from the teacher's weights (``loaded`` is the teacher, freshly read)."""
        from kelm.compress.prune import encoder_layers

        if self.fused:  # the teacher's fused LM under the student's fresh head
            teacher = self.teacher if self.teacher is not None else self._load_teacher()
            base = getattr(loaded, loaded.base_model_prefix)
            lm = getattr(teacher, "lm", None)
            if lm is None:
                raise ConfigError(f"task.teacher: {self.cfg.teacher} is a KG-only model; it has no LM to start from")
            result = base.load_state_dict(lm.state_dict(), strict=False)
            left = [k for k in result.missing_keys + result.unexpected_keys if not k.startswith("pooler.")]
            if left:
                raise ConfigError(f"task.teacher: its LM does not fit the student ({', '.join(left[:3])}, ...)")
        depth = len(encoder_layers(loaded))
        layers = self.cfg.layers
        if self.cfg.student == "layers":
            keep = layers if isinstance(layers, list) else alternate_layers(depth, layers)
            student = keep_layers(loaded, keep)
            self.layer_map = [i + 1 for i in keep]
        else:
            if isinstance(layers, list):
                raise ConfigError("task.layers: a 'shared' student takes a layer count, not a list")
            student = shared_student(loaded, layers, self.cfg.groups)
            self.layer_map = [i + 1 for i in alternate_layers(depth, layers)]
        if self.cfg.attention_weight:
            student.set_attn_implementation("eager")
        return student

    def configure(self, train: TrainConfig) -> None:
        self.base.configure(train)

    def build_model(self) -> nn.Module:
        self.teacher = self._load_teacher()
        return self.base.build_model()

    def lr_scale(self, name: str) -> float:
        return self.base.lr_scale(name)

    def parallel_plan(self) -> ParallelPlan:
        return self.base.parallel_plan()

    # -- data -----------------------------------------------------------------------------------
    def train_data(self) -> Sequence[Any]:
        if self.view is None:
            return self.base.train_data()
        items = self.base.splits["train"]
        pairs = list(zip(items, self.view.splits["train"], strict=True))
        lengths = [len(s["input_ids"]) for s in items] if self.base.cfg.group_by_length else None
        return Samples(pairs, lengths)

    def eval_data(self) -> Sequence[Any] | None:
        return self.base.eval_data()

    def test_data(self) -> Sequence[Any] | None:
        return self.base.test_data()

    def collate(self, samples: list[Any]) -> Batch:
        if not samples or not isinstance(samples[0], tuple):
            return self.base.collate(samples)
        assert self.view is not None
        batch = self.base.collate([s for s, _ in samples])
        teacher = self.view.collate([t for _, t in samples])
        return batch | {TEACHER + k: v for k, v in teacher.items()}

    def batch_weight(self, batch: Batch) -> int:
        return self.base.batch_weight(batch)

    def tokens(self, batch: Batch) -> int:
        return self.base.tokens(batch)

    # -- loss -----------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        if self.teacher is None:
            self.teacher = self._load_teacher()
        deep = {"output_hidden_states": bool(cfg.hidden_weight), "output_attentions": bool(cfg.attention_weight)}
        out = model(**model_inputs(batch), **deep)
        loss = self.base.gold_loss(out.logits, batch) * (1 - cfg.alpha) if cfg.alpha < 1 else 0.0
        teacher_batch = {k[len(TEACHER) :]: v for k, v in batch.items() if k.startswith(TEACHER)} or batch
        device = out.logits.device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with torch.no_grad():
            if self.fused:
                t = SimpleNamespace(logits=self.teacher(**teacher_batch)["logits"])
            else:
                t = self.teacher(**model_inputs(teacher_batch), **deep)
        if cfg.alpha > 0:
            s_logits, t_logits = self._paired_logits(out.logits, t.logits, batch, teacher_batch)
            loss = loss + cfg.alpha * logit_kd(s_logits, t_logits, cfg.temperature)
        mask = batch["attention_mask"]
        if cfg.hidden_weight:
            pairs = zip([0, *range(1, len(out.hidden_states))], [0, *self.layer_map], strict=True)
            h = sum(hidden_mse(out.hidden_states[s], t.hidden_states[j], mask) for s, j in pairs)
            loss = loss + cfg.hidden_weight * h / (len(self.layer_map) + 1)
        if cfg.attention_weight:
            pairs = zip(out.attentions, [t.attentions[j - 1] for j in self.layer_map], strict=True)
            a = sum(attention_kl(s, tt, mask) for s, tt in pairs)
            loss = loss + cfg.attention_weight * a / len(self.layer_map)
        return loss, {}  # type: ignore[return-value]

    def _paired_logits(
        self, student: torch.Tensor, teacher: torch.Tensor, batch: Batch, teacher_batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of student and teacher logits that see the same text: texts (classification) or
        words (NER: each word's first sub-word, in the shorter of the two truncations)."""
        if student.dim() == 2:
            return student, teacher
        s_rows, t_rows = [], []
        for i in range(student.shape[0]):
            s_pos = (batch["labels"][i] != IGNORE).nonzero().flatten()
            t_pos = (teacher_batch["labels"][i] != IGNORE).nonzero().flatten()
            n = min(len(s_pos), len(t_pos))
            s_rows.append(student[i, s_pos[:n]])
            t_rows.append(teacher[i, t_pos[:n]])
        return torch.cat(s_rows), torch.cat(t_rows)

    # -- evaluation and export: the teacher's task ----------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Sequence[Batch]) -> dict[str, float]:
        return self.base.evaluate(model, batches)

    def eval_details(self) -> Any:
        return self.base.eval_details()

    def breakdown(self, details: list[Any]) -> dict[str, Any]:
        return self.base.breakdown(details)

    def finalize_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        return self.base.finalize_metrics(metrics)

    def resume_state(self) -> dict[str, Any]:
        return self.base.resume_state()

    def check_resume(self, state: dict[str, Any], ckpt: Path) -> None:
        self.base.check_resume(state, ckpt)

    def model_config(self) -> dict[str, Any]:
        config = self.base.model_config()
        model = dict(config["model"])
        model["distilled_from"] = str(self.teacher_folder)
        model["student"] = self.cfg.student
        model["task_table"] = self.table  # the data and metrics this model is evaluated with
        return {**config, "task": self.name, "model": model}

    def save_artifacts(self, folder: Path) -> None:
        self.base.save_artifacts(folder)


__all__ = ["DistillConfig", "DistillTask"]
