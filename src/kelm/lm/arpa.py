"""ARPA files: write an `NgramLM` and read one back (ours or any other tool's).

Layout: optional ``#`` comment lines (kelm keeps its settings there as ``# kelm key=value``), then
``\\data\\`` with ``ngram k=count`` lines, one ``\\k-grams:`` section per order with lines
``log10_prob<TAB>w1 .. wk[<TAB>log10_backoff]`` and a final ``\\end\\``. The tab separators are the
ones KenLM requires.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kelm.atomic import atomic_path
from kelm.errors import DataError
from kelm.lm.backoff import BOS, EOS, NO_PROB, UNK, NgramLM, OrderTable

UNK_PROB = -100.0  # what KenLM assumes for <unk> when an ARPA file lacks it


def _fmt(x: float) -> str:
    return f"{x:.8g}"


def write_arpa(model: NgramLM, path: str | Path) -> None:
    """Write ``model`` as an ARPA file, atomically."""
    words = np.array(model.vocab, dtype=object)
    texts = words
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for key, value in model.meta.items():
            fh.write(f"# kelm {key}={value}\n")
        fh.write("\n\\data\\\n")
        for k, table in enumerate(model.tables, start=1):
            fh.write(f"ngram {k}={len(table)}\n")
        v = len(model.vocab)
        has_next = [True] * (model.order - 1) + [False]
        for k, table in enumerate(model.tables, start=1):
            if k > 1:
                texts = texts[table.keys // v] + " " + words[table.keys % v]
            fh.write(f"\n\\{k}-grams:\n")
            if has_next[k - 1]:
                nxt = model.tables[k]
                is_context = np.zeros(len(table), dtype=bool)
                is_context[np.unique(nxt.keys // v)] = True
                rows = zip(table.log10_prob.tolist(), texts, table.log10_bow.tolist(), is_context.tolist(), strict=True)
                lines = (f"{_fmt(p)}\t{t}\t{_fmt(b)}\n" if c else f"{_fmt(p)}\t{t}\n" for p, t, b, c in rows)
            else:
                lines = (f"{_fmt(p)}\t{t}\n" for p, t in zip(table.log10_prob.tolist(), texts, strict=True))
            fh.writelines(lines)
        fh.write("\n\\end\\\n")


def read_arpa(path: str | Path) -> NgramLM:
    """Load an ARPA file. Malformed files raise `DataError` naming the file and line."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            sections, meta = _read_sections(path, enumerate(fh, start=1))
    except FileNotFoundError:
        raise DataError("no such file", path) from None
    except UnicodeDecodeError:
        raise DataError("not valid UTF-8", path) from None
    except OSError as err:
        raise DataError(f"cannot read: {err.strerror or err}", path) from None
    return _build(path, sections, meta)


def _read_sections(path: Path, lines) -> tuple[list[tuple[int, list[str]]], dict[str, str]]:
    """Raw n-gram lines per order, each with the line number of its first entry; and the kelm comments."""
    meta: dict[str, str] = {}
    number = 0
    for number, line in lines:
        text = line.strip()
        if text.startswith("# kelm ") and "=" in text:
            key, _, value = text[len("# kelm ") :].partition("=")
            meta[key] = value
        elif text and not text.startswith("#"):
            if text != "\\data\\":
                raise DataError(f"expected \\data\\, found {text[:40]!r}", path, number)
            break
    else:
        raise DataError("no \\data\\ section (not an ARPA file)", path, number or None)
    counts: list[int] = []
    for number, line in lines:
        text = line.strip()
        if not text:
            if counts:
                break
            continue
        head, _, value = text.partition("=")
        if not head.startswith("ngram ") or head[6:].strip() != str(len(counts) + 1) or not value.isdigit():
            raise DataError(f"expected 'ngram {len(counts) + 1}=<count>', found {text[:40]!r}", path, number)
        counts.append(int(value))
    if not counts:
        raise DataError("no n-gram counts after \\data\\", path, number)
    sections: list[tuple[int, list[str]]] = []
    for k, count in enumerate(counts, start=1):
        for number, line in lines:  # noqa: B007 (number is used after the loop)
            if line.strip():
                break
        if line.strip() != f"\\{k}-grams:":
            raise DataError(f"expected \\{k}-grams:, found {line.strip()[:40]!r}", path, number)
        body = [text for _, (_, text) in zip(range(count), lines, strict=False)]
        if len(body) < count or any(not x.strip() for x in body):
            raise DataError(f"\\{k}-grams: has fewer than the {count} lines its header announces", path, number + 1)
        sections.append((number + 1, body))
    for number, line in lines:
        if line.strip():
            if line.strip() != "\\end\\":
                raise DataError(f"expected \\end\\, found {line.strip()[:40]!r}", path, number)
            break
    else:
        raise DataError("missing \\end\\", path)
    return sections, meta


def _parse(path: Path, k: int, first_line: int, body: list[str]) -> tuple[list[list[str]], list[float], list[float]]:
    grams, probs, bows = [], [], []
    for i, line in enumerate(body):
        parts = line.split()
        if len(parts) not in (k + 1, k + 2):
            raise DataError(f"expected a {k}-gram line 'log10_prob words [backoff]'", path, first_line + i)
        try:
            probs.append(float(parts[0]))
            bows.append(float(parts[k + 1]) if len(parts) == k + 2 else 0.0)
        except ValueError:
            raise DataError("not a number", path, first_line + i) from None
        grams.append(parts[1 : k + 1])
    return grams, probs, bows


def _build(path: Path, sections: list[tuple[int, list[str]]], meta: dict[str, str]) -> NgramLM:
    first_line, body = sections[0]
    grams, probs, bows = _parse(path, 1, first_line, body)
    vocab = [g[0] for g in grams]
    if len(set(vocab)) != len(vocab):
        raise DataError("a word appears twice in \\1-grams:", path)
    for special, prob in ((UNK, UNK_PROB), (BOS, NO_PROB), (EOS, NO_PROB)):
        if special not in vocab:
            vocab.append(special)
            probs.append(prob)
            bows.append(0.0)
    v = len(vocab)
    tables = [OrderTable(np.arange(v, dtype=np.int64), np.array(probs), np.array(bows))]
    model = NgramLM(vocab, tables, lowercase=meta.get("lowercase") == "true", meta=meta)
    index = model.index
    for k, (first_line, body) in enumerate(sections[1:], start=2):
        grams, probs, bows = _parse(path, k, first_line, body)
        try:
            ids = np.array([[index[w] for w in g] for g in grams], dtype=np.int64).reshape(len(grams), k)
        except KeyError as err:
            raise DataError(f"word {err.args[0]!r} of a {k}-gram is not among the 1-grams", path) from None
        prefix = ids[:, 0]
        for j in range(1, k - 1):
            prefix = model.lookup(j + 1, prefix, ids[:, j])
        missing = np.flatnonzero(prefix < 0)
        if len(missing):
            i = int(missing[0])
            raise DataError(f"{k}-gram {' '.join(grams[i])!r} has no {k - 1}-gram prefix", path, first_line + i)
        keys = prefix * v + ids[:, -1]
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        dup = np.flatnonzero(keys[1:] == keys[:-1])
        if len(dup):
            i = int(order[dup[0] + 1])
            raise DataError(f"{k}-gram {' '.join(grams[i])!r} appears twice", path, first_line + i)
        tables.append(OrderTable(keys, np.array(probs)[order], np.array(bows)[order]))
    return model
