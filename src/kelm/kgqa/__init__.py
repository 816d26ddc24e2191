"""Question answering over a knowledge graph: question files, a MetaQA-style generator, models'
evidence paths and answer-set metrics. The models train as the ``kgqa`` task (`kelm.tasks.kgqa`)."""

from kelm.kgqa.evidence import evidence_paths
from kelm.kgqa.generator import GeneratorConfig, generate, write_generated
from kelm.kgqa.graph import QAGraph
from kelm.kgqa.metrics import answer_set, hits_at_1, set_f1
from kelm.kgqa.questions import Question, find_topic, read_questions, write_questions

__all__ = [
    "GeneratorConfig",
    "QAGraph",
    "Question",
    "answer_set",
    "evidence_paths",
    "find_topic",
    "generate",
    "hits_at_1",
    "read_questions",
    "set_f1",
    "write_generated",
    "write_questions",
]
