"""Multi-hop questions from any knowledge graph, the way MetaQA was built.

For each topic entity and hop count k, relation paths of k steps are sampled by walking facts
that exist from the topic (forward, or backward as ``inverse`` steps; a step never undoes the
previous one). The answers are every entity the path reaches from the topic, except the topic
itself; paths with no answer or more than ``max_answers`` are skipped. Each question is phrased
by one of several templates built from the relation names. Topic entities are shuffled with the
seed and split 80/10/10 into train, dev and test, so no topic entity is in two splits.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kelm.atomic import write_text_atomic
from kelm.errors import ConfigError
from kelm.kgqa.graph import QAGraph
from kelm.kgqa.questions import SPLITS, Question, split_file, write_questions

STATS_FILE = "stats.json"
ENTITIES_FILE = "entities.tsv"


def _chain(rs: Sequence[str], sep: str) -> str:
    """``r_k sep r_(k-1) ... sep r_1``: the last step first, as English nests "of" phrases."""
    return sep.join(reversed(rs))


#: Phrasings of a path; each takes the step names r1..rk (in path order) and the topic mention.
TEMPLATES: tuple[Callable[[Sequence[str], str], str], ...] = (
    lambda rs, x: f"what is the {_chain(rs, ' of the ')} of {x}",
    lambda rs, x: f"{x}'s " + "'s ".join(rs) + "?",
    lambda rs, x: f"which entity is the {_chain(rs, ' of the ')} of {x}",
    lambda rs, x: f"starting from {x}, follow {', then '.join(rs)}: which entities do you reach",
)


@dataclass
class GeneratorConfig:
    hops: tuple[int, ...] = (1, 2, 3)
    per_entity: int = 1
    max_answers: int = 50
    seed: int = 0
    inverse: bool = True
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    max_topics: int | None = None
    attempts: int = 20  # walks tried per wanted question

    def check(self) -> None:
        if not self.hops or any(k < 1 or k > 3 for k in self.hops):
            raise ConfigError("hops must be among 1, 2 and 3")
        if self.per_entity < 1 or self.max_answers < 1:
            raise ConfigError("per_entity and max_answers must be >= 1")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6 or any(f < 0 for f in self.split_fractions):
            raise ConfigError("split fractions must be >= 0 and sum to 1")


@dataclass
class GeneratedQuestion:
    question: Question
    topic: int
    path: tuple[int, ...]
    answers: list[int]


@dataclass
class Generated:
    """Questions per (split, hops), plus the topic entities of each split."""

    questions: dict[tuple[str, int], list[GeneratedQuestion]] = field(default_factory=dict)
    topics: dict[str, list[int]] = field(default_factory=dict)


def split_topics(n: int, fractions: Sequence[float], rng: random.Random) -> dict[str, list[int]]:
    """Entity indices shuffled and cut by ``fractions`` into train, dev and test."""
    order = list(range(n))
    rng.shuffle(order)
    n_train = round(fractions[0] * n)
    n_dev = round(fractions[1] * n)
    cuts = {"train": order[:n_train], "dev": order[n_train : n_train + n_dev], "test": order[n_train + n_dev :]}
    return {k: sorted(v) for k, v in cuts.items()}


def sample_paths(graph: QAGraph, topic: int, hops: int, want: int, cfg: GeneratorConfig, rng: random.Random):
    """Up to ``want`` distinct relation paths of ``hops`` steps from ``topic``, with their answers."""
    R = graph.num_relations
    found: dict[tuple[int, ...], list[int]] = {}
    tried: set[tuple[int, ...]] = set()
    for _ in range(want * cfg.attempts):
        if len(found) >= want:
            break
        node, path = topic, []
        for _ in range(hops):
            steps = [s for s in sorted(graph.steps[node]) if (cfg.inverse or s < R)]
            if path:  # never undo the previous step
                back = path[-1] + R if path[-1] < R else path[-1] - R
                steps = [s for s in steps if s != back]
            if not steps:
                break
            step = rng.choice(steps)
            path.append(step)
            node = rng.choice(graph.steps[node][step])
        key = tuple(path)
        if len(key) != hops or key in tried:
            continue
        tried.add(key)
        answers = sorted(graph.follow(topic, key) - {topic})
        if 0 < len(answers) <= cfg.max_answers:
            found[key] = answers
    return found


def generate(graph: QAGraph, cfg: GeneratorConfig) -> Generated:
    """Questions for every split and hop count (deterministic given ``cfg.seed``)."""
    cfg.check()
    rng = random.Random(cfg.seed)
    topics = split_topics(graph.num_entities, cfg.split_fractions, rng)
    if cfg.max_topics is not None:
        total = sum(len(v) for v in topics.values()) or 1
        topics = {k: v[: max(1, round(cfg.max_topics * len(v) / total))] for k, v in topics.items()}
    out = Generated(topics=topics)
    for split in SPLITS:
        for k in cfg.hops:
            rows: list[GeneratedQuestion] = []
            for topic in topics[split]:
                # one generator per (topic, hops): adding a hop count or a split leaves the others as they were
                local = random.Random(f"{cfg.seed}:{topic}:{k}")
                for path, answers in sample_paths(graph, topic, k, cfg.per_entity, cfg, local).items():
                    template = local.choice(TEMPLATES)
                    text = template([graph.step_name(s) for s in path], f"[{graph.names[topic]}]")
                    q = Question(text, graph.names[topic], tuple(graph.names[a] for a in answers), k)
                    rows.append(GeneratedQuestion(q, topic, path, answers))
            out.questions[(split, k)] = rows
    return out


def write_generated(folder: str | Path, graph: QAGraph, gen: Generated, cfg: GeneratorConfig) -> dict:
    """``{split}_{k}hop.txt`` files, ``entities.tsv`` (name to id) and ``stats.json``; returns the stats."""
    folder = Path(folder)
    counts: dict[str, dict[str, int]] = {}
    answers: dict[str, float] = {}
    for (split, k), rows in sorted(gen.questions.items()):
        write_questions(split_file(folder, split, k), [r.question for r in rows])
        counts.setdefault(split, {})[f"{k}hop"] = len(rows)
        if split == "train" and rows:
            answers[f"{k}hop"] = sum(len(r.answers) for r in rows) / len(rows)
    write_text_atomic(folder / ENTITIES_FILE, graph.entity_table())
    stats = {
        "format": "{split}_{k}hop.txt: question with [topic entity]<TAB>answer|answer|...",
        "entities": graph.num_entities,
        "relations": graph.num_relations,
        "facts": len(graph.triples),
        "questions": counts,
        "topics": {k: len(v) for k, v in gen.topics.items()},
        "mean_answers_train": answers,
        "templates": len(TEMPLATES),
        "config": asdict(cfg),
    }
    write_text_atomic(folder / STATS_FILE, json.dumps(stats, indent=2) + "\n")
    return stats
