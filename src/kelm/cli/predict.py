"""`kelm predict`: run a fine-tuned model (classification, NER, QA, KG-fused classification) on text
files or stdin."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from kelm.errors import ConfigError, DataError

BATCH = 32


def _lines(files: list[Path] | None) -> Iterator[tuple[str, int, str]]:
    """``(source, line number, text)`` of every non-empty input line (stdin without files)."""
    if not files:
        for n, line in enumerate(sys.stdin, start=1):
            if line.strip():
                yield "<stdin>", n, line.rstrip("\n")
        return
    for path in files:
        if not path.is_file():
            raise DataError("file not found", path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError("invalid UTF-8", path) from None
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                yield str(path), n, line


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict(
    model_dir: Annotated[Path, typer.Option("--model", "-m", help="A run folder or its model/ folder.")],
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Input files (stdin if none): one text per line; for NER one sentence per line "
            "(words split on spaces); for QA 'question<TAB>context' per line, or a SQuAD-format .json file."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per input.")] = False,
) -> None:
    """Print the predicted label (classification, also KG-fused), entities (NER), answer (QA) or
    mentions and relations (extraction) of each input."""
    import torch

    from kelm.lm.hf import load_finetuned

    kind = _kind(model_dir)
    if kind == "kg-fusion":
        _classify_fused(model_dir, files, as_json)
        return
    if kind == "extractor":
        _extract(model_dir, files, as_json)
        return
    model, tokenizer, spec = load_finetuned(model_dir)
    head, max_length = spec["head"], int(spec.get("max_length", 512))
    with torch.no_grad():
        if head == "classification":
            _classify(model, tokenizer, max_length, files, as_json)
        elif head == "ner":
            _tag(model, tokenizer, max_length, files, as_json)
        elif head == "qa":
            _answer(model, tokenizer, spec, files, as_json)
        else:
            raise ConfigError(f"{model_dir}: a '{head}' model has no predictions to print (fine-tuned models only)")


def _extract(model_dir: Path, files: list[Path] | None, as_json: bool) -> None:
    from kelm.extract.extractor import Extractor

    extractor = Extractor.from_pretrained(model_dir)
    for _, _, text in _lines(files):
        found = extractor.extract(text)
        mentions = [{"text": m.text, "type": m.type, "start": m.start, "end": m.end} for m in found.mentions]
        relations = [{"head": r.head.text, "relation": r.type, "tail": r.tail.text} for r in found.relations]
        if as_json:
            scores = [round(m.score, 6) for m in found.mentions], [round(r.score, 6) for r in found.relations]
            for item, score in zip(mentions + relations, scores[0] + scores[1], strict=True):
                item["score"] = score
            typer.echo(json.dumps({"text": text, "mentions": mentions, "relations": relations}))
        else:
            shown = [f"[{m['text']}]{m['type']}" for m in mentions]
            shown += [f"({r['head']}, {r['relation']}, {r['tail']})" for r in relations]
            typer.echo(" ".join(shown) + f"\t{text}")


def _classify(model: Any, tokenizer: Any, max_length: int, files: list[Path] | None, as_json: bool) -> None:
    from kelm.tasks.classification import classify

    for chunk in _chunks(_lines(files), BATCH):
        texts = [t for _, _, t in chunk]
        for text, (label, prob) in zip(texts, classify(model, tokenizer, texts, max_length), strict=True):
            if as_json:
                typer.echo(json.dumps({"text": text, "label": label, "probability": round(prob, 6)}))
            else:
                typer.echo(f"{label}\t{prob:.4f}\t{text}")


def _kind(model_dir: Path) -> str | None:
    """The ``kind`` of an exported model's ``[model]`` table (None when unreadable: the loader reports it)."""
    from kelm.app.models import model_kind

    try:
        return model_kind(model_dir)
    except DataError:
        return None


def _classify_fused(model_dir: Path, files: list[Path] | None, as_json: bool) -> None:
    """Classify with a `kelm fuse train` model: each text is linked to the graph saved with it."""
    from kelm.app.fused import FusedClassifier

    classifier = FusedClassifier(model_dir)
    for chunk in _chunks(_lines(files), BATCH):
        for p in classifier.predict([t for _, _, t in chunk]):
            if as_json:
                ents = [{"text": p.text[m.start : m.end], "entity": m.entity, "method": m.method} for m in p.mentions]
                typer.echo(
                    json.dumps(
                        {"text": p.text, "label": p.label, "probability": round(p.probability, 6), "entities": ents}
                    )
                )
            else:
                typer.echo(f"{p.label}\t{p.probability:.4f}\t{p.text}")


def _tag(model: Any, tokenizer: Any, max_length: int, files: list[Path] | None, as_json: bool) -> None:
    from kelm.tasks.ner import entities, tag_sentences

    for chunk in _chunks(_lines(files), BATCH):
        sentences = [t.split() for _, _, t in chunk]
        for words, tags in zip(sentences, tag_sentences(model, tokenizer, sentences, max_length), strict=True):
            found = entities(words, tags)
            if as_json:
                ents = [{"type": t, "text": s} for t, s in found]
                typer.echo(json.dumps({"text": " ".join(words), "tags": tags, "entities": ents}))
            else:
                typer.echo(" | ".join(f"{s} ({t})" for t, s in found) if found else "(no entities)")


def _answer(model: Any, tokenizer: Any, spec: dict[str, Any], files: list[Path] | None, as_json: bool) -> None:
    from kelm.tasks.qa import QAExample, answer_questions, read_squad

    examples: list[QAExample] = []
    for path in files or []:
        if path.suffix == ".json":
            examples += read_squad(path, require_answers=False)
    plain = [p for p in files or [] if p.suffix != ".json"]
    if plain or not files:
        for source, n, line in _lines(plain or None):
            parts = line.split("\t")
            if len(parts) != 2:
                raise DataError("expected 'question<TAB>context'", source, n)
            examples.append(QAExample(f"{source}:{n}", parts[0], parts[1], []))
    answers = answer_questions(model, tokenizer, examples, spec)
    for ex, ans in zip(examples, answers, strict=True):
        if as_json:
            typer.echo(json.dumps({"id": ex.id, "question": ex.question, "answer": ans}))
        else:
            typer.echo(f"{ex.id}\t{ans}")
