"""KG-enhanced classification: fusion models, joint loss, ablation modes, training through the engine."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from kelm.app.run import run_training
from kelm.fusion.model import FusionModel
from kelm.tasks import build_task
from kelm.tasks.kg_enhanced import KGEnhancedTask

torch.set_num_threads(1)
SYLLABLES = ("zor", "blat", "quim", "bex", "dra", "vok", "mip", "tul", "gash", "ren", "fyo", "kel", "prun", "sid")
TEMPLATES = ("I saw the {} yesterday.", "Nobody expected a {} here.")


def _names(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    names: set[str] = set()
    while len(names) < n:
        names.add("".join(rng.sample(SYLLABLES, 3)))
    return sorted(names)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """Made-up entities in two classes that only the graph knows: each is ``member_of`` its class
    node (plus random ``near`` facts); sentences name one entity, the label is its class, and
    test entities never occur in training sentences."""
    folder = tmp_path_factory.mktemp("synthetic")
    names = _names(40)
    rng = random.Random(1)
    cls = {n: "a" if i % 2 else "b" for i, n in enumerate(names)}
    facts = [(n, "member_of", f"class_{c}") for n, c in cls.items()]
    facts += [(rng.choice(names), "near", rng.choice(names)) for _ in range(30)]
    (folder / "kg.tsv").write_text("".join(f"{h}\t{r}\t{t}\n" for h, r, t in facts), encoding="utf-8")
    order = names[:]
    rng.shuffle(order)
    splits = {"train": order[:28], "dev": order[28:32], "test": order[32:]}
    for split, members in splits.items():
        rows = [
            f"{split}{i}\t{t.format(n)}\t{cls[n]}"
            for i, (n, t) in enumerate((n, t) for n in members for t in TEMPLATES)
        ]
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def _task_cfg(folder: Path, **kw) -> dict:
    cfg = {
        "name": "kg-enhanced-classification",
        "kg": str(folder / "kg.tsv"),
        "train": str(folder / "train.tsv"),
        "dev": str(folder / "dev.tsv"),
        "test": str(folder / "test.tsv"),
        "model": "tiny-bert",
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 2,
        "link_encoder": None,
        "gnn_dim": 16,
        "gnn_layers": 2,
        "hops": 1,
        "fanout": 4,
        "dropout": 0.0,
    }
    return cfg | kw


def _batch(task: KGEnhancedTask, n: int = 8) -> dict:
    return task.collate([task.train_data()[i] for i in range(n)])


def _model(task: KGEnhancedTask) -> FusionModel:
    torch.manual_seed(0)
    return task.build_model()


def test_batches_carry_linked_subgraphs(synthetic):
    task = build_task(_task_cfg(synthetic))
    batch = _batch(task)
    assert batch["labels"].shape == (8,)
    assert len(batch["seed_batch"]) == 8  # one linked entity per sentence
    assert batch["edge_index"].max() < len(batch["node_ids"])
    tail = task.tensors.relation_index()["member_of"]
    assert (batch["edge_type"] == tail).any()
    for b, s, e, node in zip(
        *(batch[k].tolist() for k in ("mention_batch", "mention_start", "mention_end", "mention_node")), strict=True
    ):
        assert 0 < s < e and batch["seed_batch"][batch["seed_index"] == node].tolist() == [b]


@pytest.mark.parametrize("gnn", ["rgcn", "gat"])
def test_greaselm_shapes_and_two_way_flow(synthetic, gnn):
    task = build_task(_task_cfg(synthetic, mode="joint", fusion="greaselm", gnn=gnn))
    model = _model(task).eval()
    batch = _batch(task)
    out = model(**batch)
    assert out["logits"].shape == (8, 2) and "kg_loss" not in out  # auxiliary losses only while training
    # graph -> LM: other node features change the LM's final token states
    ei, et, _ = model._message_edges(batch, 8)
    x = torch.cat([model.graph.features(batch["node_ids"]), model.context.expand(8, -1)])
    tokens, nodes = model._greaselm(batch, x, ei, et)
    tokens2, _ = model._greaselm(batch, x + 1.0, ei, et)
    assert tokens.shape[:2] == batch["input_ids"].shape and not torch.allclose(tokens, tokens2)
    # LM -> graph: other text changes the graph's node states
    other = dict(batch, input_ids=batch["input_ids"].flip(0))
    _, nodes2 = model._greaselm(other, x, ei, et)
    assert not torch.allclose(nodes, nodes2)
    # the task loss alone reaches the GNN, the LM and the interaction MLPs
    model.train()
    torch.nn.functional.cross_entropy(model(**batch)["logits"], batch["labels"]).backward()
    for prefix in ("graph.convs.0", "graph.convs.1", "lm.embeddings", "lm.encoder.layer.0", "mint.0", "context"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), prefix


def test_joint_loss_is_the_weighted_sum(synthetic):
    task = build_task(_task_cfg(synthetic, mode="joint", lambda_kg=0.3, lambda_align=0.7))
    model = _model(task).train()
    batch = _batch(task)
    torch.manual_seed(5)
    total, logged = task.loss(model, batch)
    torch.manual_seed(5)
    parts = task.loss_parts(model, batch)
    assert set(parts) == {"task", "kg", "align"} and all(float(v.detach()) > 0 for v in parts.values())
    want = parts["task"] + 0.3 * parts["kg"] + 0.7 * parts["align"]
    assert torch.allclose(total, want) and logged["loss_kg"] == pytest.approx(float(parts["kg"]))


@pytest.mark.parametrize(
    ("mode", "has_lm", "has_graph", "parts"),
    [
        ("lm", True, False, {"task"}),
        ("kg", False, True, {"task", "kg"}),
        ("joint", True, True, {"task", "kg", "align"}),
    ],
)
def test_mode_switch_excludes_components(synthetic, mode, has_lm, has_graph, parts):
    task = build_task(_task_cfg(synthetic, mode=mode))
    model = _model(task).train()
    assert (model.lm is not None) == has_lm and (model.graph is not None) == has_graph
    batch = _batch(task)
    assert set(task.loss_parts(model, batch)) == parts
    task.loss(model, batch)[0].backward()
    with_grad = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert ("lm" in with_grad) == has_lm and ("graph" in with_grad) == has_graph
    if mode == "lm":
        assert not any(n.startswith(("graph", "kg_", "align")) for n, _ in model.named_parameters())


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """lm, kg and joint runs on the synthetic set; their folders and test accuracies."""
    root = tmp_path_factory.mktemp("fusion-runs")
    train = {"strategy": "single", "max_steps": 60, "batch_size": 8, "lr": 5e-3, "log_every": 20, "tensorboard": False}
    train |= {"schedule": "cosine", "warmup_ratio": 0.0}  # what these runs were tuned with (not fine-tuning's)
    acc = {}
    for mode in ("lm", "kg", "joint"):
        summary = run_training({"task": _task_cfg(synthetic, mode=mode), "train": train}, root / mode)
        acc[mode] = summary["test"]["accuracy"]
    return root, acc


def test_graph_beats_text_on_a_kg_dependent_task(trained):
    """Test entities are unseen in training text, so only their graph neighbourhood tells the class."""
    _, acc = trained
    assert acc["kg"] >= 0.9 and acc["joint"] >= 0.9, acc
    assert acc["lm"] <= 0.75 and acc["joint"] > acc["lm"] + 0.2, acc


def test_predict_loads_a_fused_model_and_links_to_its_graph(synthetic, trained, tmp_path, capsys):
    """`kelm predict` on a saved joint model: the graph travels with the run, so the input file is
    linked to it and the unseen test entities are classified through their neighbourhoods."""
    import json

    from kelm.cli import main

    root, _ = trained
    rows = [line.split("\t") for line in (synthetic / "test.tsv").read_text(encoding="utf-8").splitlines()]
    inputs = tmp_path / "in.txt"
    inputs.write_text("".join(f"{text}\n" for _, text, _ in rows) + "no known entity here\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", "--model", str(root / "joint"), str(inputs), "--json"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(out) == len(rows) + 1
    right = 0
    for (_, text, label), pred in zip(rows, out, strict=False):
        assert pred["text"] == text and 0 < pred["probability"] <= 1
        mention = [w for w in text.replace(".", "").split() if w in {e["entity"] for e in pred["entities"]}]
        assert len(pred["entities"]) == 1 and mention == [pred["entities"][0]["text"]]
        right += pred["label"] == label
    assert right >= 0.9 * len(rows)
    assert out[-1]["entities"] == [] and out[-1]["label"] in {"a", "b"}
    # plain text output, and a folder that is not a model is one clear line
    assert main(["predict", "--model", str(root / "kg"), str(inputs)]) == 0
    assert capsys.readouterr().out.splitlines()[0].split("\t")[2] == rows[0][1]
    assert main(["predict", "--model", str(tmp_path), str(inputs)]) != 0


def test_fuse_train_flags_override_the_config(synthetic, tmp_path):
    """`kelm fuse train`: flags become task and train overrides; a bad value is one clear error."""
    import json
    import tomllib

    import tomli_w

    from kelm.cli import main

    task = {k: v for k, v in _task_cfg(synthetic, mode="kg").items() if v is not None} | {"link_encoder": ""}
    train = {"strategy": "single", "max_steps": 50, "batch_size": 8, "tensorboard": False, "threads": 1}
    cfg = tmp_path / "fuse.toml"
    cfg.write_text(tomli_w.dumps({"task": task, "train": train}), encoding="utf-8")
    out = tmp_path / "run"
    args = ["fuse", "train", str(cfg), "--mode", "joint", "--fusion", "greaselm", "--max-steps", "2", "--seed", "3"]
    assert main([*args, "--out", str(out)]) == 0
    run = tomllib.loads((out / "config.toml").read_text(encoding="utf-8"))
    assert (run["task"]["mode"], run["task"]["fusion"], run["train"]["seed"]) == ("joint", "greaselm", 3)
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    assert main(["fuse", "train", str(cfg), "--mode", "both", "--out", str(tmp_path / "bad")]) != 0


def test_served_fused_classifier_equals_kelm_predict(synthetic, trained):
    """`/v1/classify` on a joint model: the same labels, probabilities and linked entities."""
    from serving import TOKEN, Server

    from kelm.app.fused import FusedClassifier
    from kelm.app.serve import ServeSettings, create_app, load_service

    root, _ = trained
    texts = [line.split("\t")[1] for line in (synthetic / "test.tsv").read_text(encoding="utf-8").splitlines()][:12]
    want = FusedClassifier(root / "joint").predict(texts)
    with Server(create_app([load_service(root / "joint")], None, ServeSettings(TOKEN))) as server:
        _, models, _ = server.call("GET", "/v1/models")
        assert [(m["kind"], m["capabilities"]) for m in models["models"]] == [("kg-fusion", ["classify"])]
        status, body, _ = server.call("POST", "/v1/classify", {"inputs": texts})
    assert status == 200
    for got, p in zip(body["results"], want, strict=True):
        assert got["label"] == p.label and abs(got["probability"] - p.probability) < 1e-5
        assert [e["entity"] for e in got["entities"]] == [m.entity for m in p.mentions]


TRANSFER_TEMPLATES = (
    "We talked about the {} today.",
    "A {} was in the report.",
    "Is the {} still there?",
    "They found one {} again.",
)


def test_fused_teacher_distils_the_graph_into_a_text_only_student(synthetic, trained, tmp_path, capsys):
    """The joint model teaches a plain text classifier that starts from its fused LM and never sees
    the graph. Distilled (α = 1, so the transfer set's labels are never read) on unlabelled sentences
    in new wordings about all entities, the student classifies the test sentences through what the
    teacher's graph knew; the LM trained on the gold training sentences alone cannot."""
    import json

    from kelm.cli import main
    from kelm.lm.hf import load_finetuned
    from kelm.train.export import load_weights

    root, acc = trained
    names = _names(40)
    rows = [
        f"t{i}\t{t.format(n)}\t{'ab'[i % 2]}"
        for i, (n, t) in enumerate((n, t) for n in names for t in TRANSFER_TEMPLATES)
    ]
    transfer = tmp_path / "transfer.tsv"
    transfer.write_text("\n".join(rows) + "\n", encoding="utf-8")
    task = {"name": "distill", "teacher": str(root / "joint"), "layers": 2, "alpha": 1.0, "temperature": 1.0}
    task |= {"train": str(transfer), "dev": str(synthetic / "dev.tsv"), "test": str(synthetic / "test.tsv")}
    train = {
        "strategy": "single",
        "max_steps": 200,
        "batch_size": 16,
        "lr": 5e-3,
        "log_every": 100,
        "tensorboard": False,
    }
    distill = build_task(task)
    student = distill.build_model()
    teacher = load_weights(distill.view.build_model(), distill.teacher_folder)
    for name, tensor in teacher.lm.state_dict().items():  # started from the teacher's fused LM
        assert torch.equal(student.bert.state_dict()[name], tensor), name
    summary = run_training({"task": task, "train": train | {"schedule": "cosine", "warmup_ratio": 0.0}}, tmp_path / "s")
    assert summary["test"]["accuracy"] >= 0.8 and summary["test"]["accuracy"] > acc["lm"] + 0.1, (summary, acc)
    # a plain Hugging Face classifier: no graph, linker or GNN in the folder
    model, _, spec = load_finetuned(tmp_path / "s")
    assert spec["kind"] == "hf" and not (tmp_path / "s" / "model" / "kg").exists()
    inputs = tmp_path / "in.txt"
    inputs.write_text("".join(line.split("\t")[1] + "\n" for line in (synthetic / "test.tsv").read_text().splitlines()))
    capsys.readouterr()
    assert main(["predict", "--model", str(tmp_path / "s"), str(inputs), "--json"]) == 0
    assert len([json.loads(line) for line in capsys.readouterr().out.splitlines()]) == 16
    # `kelm compress` on the fused run: the text student measured beside its fused teacher
    out = tmp_path / "c"
    assert (
        main(["compress", str(root / "joint"), "-m", "distill", "--layers", "1", "--max-steps", "5", "-o", str(out)])
        == 0
    )
    r = json.loads((out / "compression.json").read_text())
    assert r["original"]["metrics"]["accuracy"] == acc["joint"] and r["original"]["metric"]["name"] == "macro_f1"
    assert r["ratios"]["parameters"] < 1 and load_finetuned(out)[2]["kind"] == "hf"
    capsys.readouterr()
    assert main(["compress", str(root / "joint"), "-m", "prune", "-o", str(tmp_path / "p")]) == 2
    assert "by distillation into a text classifier only" in capsys.readouterr().err
    # a KG-fused teacher has no hidden states to match
    with pytest.raises(Exception, match="plain classification or NER teacher"):
        build_task(task | {"hidden_weight": 1.0})
