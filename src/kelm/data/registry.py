"""The registry of named data sets: where each comes from, its files and their SHA-256 hashes.

Every URL points at a fixed commit of the upstream GitHub repository, so the bytes cannot drift.
Hashes were computed from the upstream bytes at those commits (which are identical to the copies in
the project's shared data folder); none is guessed.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from kelm.errors import DatasetError

Kind = Literal["kg", "ner", "cls"]


@dataclass(frozen=True)
class FileSpec:
    """One file of a data set.

    ``url`` is where the bytes live upstream; when ``member`` is set, ``url`` is a ``.tar.gz``
    archive and the file is that member of it. ``sha256`` is the hash of the file itself (not of
    the archive); ``None`` means unknown, and then ``prepare`` only finishes with ``verify=False``.
    ``optional`` files (license and read-me texts) are downloaded but not needed to resolve.
    """

    name: str
    url: str
    sha256: str | None
    size: int | None = None
    member: str | None = None
    optional: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    """A named data set: provenance, layout and files."""

    name: str
    kind: Kind
    description: str
    license: str
    homepage: str
    format: str
    subdir: str
    files: tuple[FileSpec, ...]
    types_subdir: str | None = None
    bundled: bool = False
    reference: str | None = None

    @property
    def size(self) -> int | None:
        """Total bytes of all files, or ``None`` if any size is unknown."""
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)

    @property
    def verified(self) -> bool:
        """True when every file has a recorded SHA-256."""
        return all(f.sha256 is not None for f in self.files)

    @property
    def required(self) -> tuple[FileSpec, ...]:
        """The files a folder must hold to count as this data set."""
        return tuple(f for f in self.files if not f.optional)


def _gh(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


_KGBERT = ("yao8839836/kg-bert", "0b8f625108efcb9b43603b6840f2548ff3d3c973")
_CONVE = ("TimDettmers/ConvE", "f3c0eb286025410fa5b4c04696c918264163d0ca")
_CODEX = ("tsafavi/codex", "3132e426c2a6b643b70bad679905a3a6270be440")
_WNUT = ("leondz/emerging_entities_17", "e52a2d2a71ac1a051ca2d532eef28653c5c02603")
_POEM = ("google-research-datasets/poem-sentiment", "612e9a1f86799126c68f0c5d9c3f1fc28f88068f")

_CONVE_LICENSE = "55ec8cf0cb5d719b001fb435c3daa30a50512b218b2db257176bb84bd0a5c4e3"
_CODEX_LICENSE = "8a8d718d139b33e7f1938aaf5c2b724f3ae1930411ca9593339d87cd5740621e"

_Hashes = dict[str, tuple[str, int]]  # file name -> (sha256, size)

_TRIPLES = "`train.txt`, `valid.txt`, `test.txt`: `head\\trelation\\ttail` per line"


def _license(repo: tuple[str, str], sha256: str, size: int, path: str = "LICENSE") -> FileSpec:
    return FileSpec("LICENSE", _gh(*repo, path), sha256, size, optional=True)


def _umls() -> DatasetSpec:
    def f(name: str, sha256: str, size: int) -> FileSpec:
        return FileSpec(name, _gh(*_KGBERT, f"data/umls/{name}"), sha256, size)

    return DatasetSpec(
        name="umls",
        kind="kg",
        description="UMLS biomedical concepts: 135 entities, 46 relations; 5,216 / 652 / 661 triples",
        license="Apache-2.0 (KG-BERT release of the UMLS split)",
        homepage="https://github.com/yao8839836/kg-bert",
        format=(
            "`train.tsv`, `dev.tsv`, `test.tsv`: `head\\trel\\ttail`; `entities.txt`, `relations.txt`: "
            "one id per line; `entity2text.txt` (short name), `entity2textlong.txt` (description), "
            "`relation2text.txt`: `id\\ttext`"
        ),
        subdir="kg/umls",
        files=(
            _license(_KGBERT, "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30", 11358),
            f("train.tsv", "873ef4925516b83e7f6f8cc02b4be51d848828710a7f65a956f0ac4a9e452f35", 260013),
            f("dev.tsv", "025c98f8a4891e2a6582ec5b40ee0d904031edad9c52554522f4b7904820c98e", 32963),
            f("test.tsv", "a7eb529a3d2810fcc96341ccc97c625a5e202f8389673aa6bd317eeebbb79014", 32968),
            f("entities.txt", "c3090e4df683379d0fb47fe229859b5bfddb8d0e7802f8b3c506bb2290c5ff39", 2516),
            f("relations.txt", "aa4a63754c991824210568dc83e8e4a74d7c0ee0ff6af2c5605fde84e55d82f9", 530),
            f("entity2text.txt", "c6438aafd894917cefe73ea75fc20743d18f4226ebc85a2f43758ff3f77330b9", 5033),
            f(
                "entity2textlong.txt",
                "cb4eccdebf5bfc73adc2db0fc582d215256aa11d789d3a16a6c0649f338f5fe3",
                194659,
            ),
            f("relation2text.txt", "f5c5eddf696c52fc3c435ac031a4a0b06e00cc09116613db6a835d02d610123c", 1062),
        ),
        bundled=True,
        reference="filtered MRR / Hits@10: ConvE .94 / .99 (ConvE README)",
    )


def _conve_small(
    name: str,
    hashes: _Hashes,
    description: str,
    reference: str,
    archive_name: str | None = None,
    license: str = "MIT (ConvE release)",
) -> DatasetSpec:
    """Nations, Kinship, WN18RR and FB15k-237: ConvE ships each as a ``.tar.gz`` (``archive_name``,
    default ``<name>.tar.gz``); the files are its members."""
    archive = _gh(*_CONVE, archive_name or f"{name}.tar.gz")
    files = [FileSpec(fn, archive, sha, size, member=fn) for fn, (sha, size) in hashes.items()]
    return DatasetSpec(
        name=name,
        kind="kg",
        license=license,
        homepage="https://github.com/TimDettmers/ConvE",
        format=_TRIPLES,
        subdir=f"kg/{name}",
        files=(_license(_CONVE, _CONVE_LICENSE, 1069), *files),
        description=description,
        reference=reference,
    )


def _codex(size: str, hashes: _Hashes, description: str, reference: str) -> DatasetSpec:
    def f(fn: str) -> FileSpec:
        sha, n = hashes[fn]
        return FileSpec(fn, _gh(*_CODEX, f"data/triples/codex-{size}/{fn}"), sha, n)

    relations = FileSpec(
        "relations.json",
        _gh(*_CODEX, "data/relations/en/relations.json"),
        "2b467fab26430a0500e5fe82cdb9b3c4fbcfda01827ff3bfa833dc5470ad92f7",
        10698,
    )
    return DatasetSpec(
        name=f"codex-{size}",
        kind="kg",
        license="MIT (CoDEx, Safavi & Koutra 2020)",
        homepage="https://github.com/tsafavi/codex",
        format=(
            "`train.txt`, `valid.txt`, `test.txt`: Wikidata ids `Q..\\tP..\\tQ..`; `relations.json`: "
            "relation id -> label and description; entity types in the `codex-types` data set"
        ),
        subdir=f"kg/codex-{size}",
        files=(
            _license(_CODEX, _CODEX_LICENSE, 1068),
            *(f(fn) for fn in ("train.txt", "valid.txt", "test.txt")),
            relations,
        ),
        types_subdir="kg/codex-types",
        description=description,
        reference=reference,
    )


def _codex_types() -> DatasetSpec:
    return DatasetSpec(
        name="codex-types",
        kind="kg",
        description="Entity types for all CoDEx entities (auxiliary to codex-s and codex-m)",
        license="MIT (CoDEx, Safavi & Koutra 2020)",
        homepage="https://github.com/tsafavi/codex",
        format="`entity2types.json`: entity -> type ids; `types.json`: type id -> label, description",
        subdir="kg/codex-types",
        files=(
            _license(_CODEX, _CODEX_LICENSE, 1068),
            FileSpec(
                "entity2types.json",
                _gh(*_CODEX, "data/types/entity2types.json"),
                "9c3797961498fc312a6d62c798b250c3ad501578a8ac07c0829a2862c627a878",
                1749871,
            ),
            FileSpec(
                "types.json",
                _gh(*_CODEX, "data/types/en/types.json"),
                "2934c3bac72fd9e7dc8a6452a84845e8fa232264aaa505c4b81cad2b0e7c5626",
                530344,
            ),
        ),
    )


def _wnut17() -> DatasetSpec:
    def f(fn: str, path: str, sha256: str, size: int) -> FileSpec:
        return FileSpec(fn, _gh(*_WNUT, path), sha256, size)

    return DatasetSpec(
        name="wnut17",
        kind="ner",
        description="WNUT-17 emerging and rare entities NER: 6 entity types, BIO tags",
        license="CC-BY-4.0 (stated in README.md; the upstream repository has no LICENSE file)",
        homepage="https://github.com/leondz/emerging_entities_17",
        format="CoNLL: `token\\ttag` per line, blank line between sentences",
        subdir="ner/wnut17",
        files=(
            FileSpec(
                "README.md",
                _gh(*_WNUT, "README.md"),
                "7dba67f5d6f7789af3b36af9cbea54b73705f86df100002ae202a9c2f5750157",
                2341,
                optional=True,
            ),
            f(
                "train.conll",
                "wnut17train.conll",
                "731820e13f71af324c6b55a1575ec2ce59fbaa2a0806f8f0400b98d56cd6a7a5",
                493781,
            ),
            f(
                "dev.conll",
                "emerging.dev.conll",
                "e053b752b8155113ca66e7db08af5f2f5f43ab993694e4774f1ec5bad42312d8",
                114749,
            ),
            f(
                "test.conll",
                "emerging.test.annotated",
                "2aa79b764e56ec9264a1b30fdd9b70195bd00ff400b62edd8f399d5f13c178f0",
                192425,
            ),
        ),
    )


def _poem_sentiment() -> DatasetSpec:
    def f(fn: str, sha256: str, size: int) -> FileSpec:
        return FileSpec(fn, _gh(*_POEM, f"data/{fn}"), sha256, size)

    return DatasetSpec(
        name="poem-sentiment",
        kind="cls",
        description="Poem verse sentiment: -1 negative, 0 neutral, 1 positive (2 mixed, train only)",
        license="CC-BY-4.0 (Google Research)",
        homepage="https://github.com/google-research-datasets/poem-sentiment",
        format="`train.tsv`, `dev.tsv`, `test.tsv`: `id\\ttext\\tlabel`; 892 / 105 / 104 rows",
        subdir="cls/poem-sentiment",
        files=(
            _license(_POEM, "7e7170e3cebf88a9f60c7b8421418323c09304da1af4d5e90f4da1dc1c8a2661", 18650),
            FileSpec(
                "README.md",
                _gh(*_POEM, "README.md"),
                "6f3ee5c0d2df8bdb1b0fa9d1f7191e4e1279b5d1f5fc381f5187e1286be8c3b1",
                281,
                optional=True,
            ),
            f("train.tsv", "09503a850796736a8e63504ae2c8de983f57dceebc2342ea93a7f7ad06af56d0", 40567),
            f("dev.tsv", "0770bd7b80e04c92da82e78f9f93ce35d38b334b4830fca2b9b4d7e174f152e5", 4747),
            f("test.tsv", "a406d87b62a6b7c9615468a8b66e69c027fa8f2f03a4f8f6c79df26c260de620", 4556),
        ),
    )


_SPECS: tuple[DatasetSpec, ...] = (
    _umls(),
    _conve_small(
        "nations",
        {
            "train.txt": ("0830fa9da8e5bba2ccdaa45b7bdc9130451ba66b09ff2708f35fccaf82473e57", 39101),
            "valid.txt": ("2b337a62e51a2f45c283eac98a70d21b7e0e102136be1539b2a52c652a7b0530", 4851),
            "test.txt": ("3971085165b47b6aeaec68058c6d8d98b3005e929db81268410b95ae4db770ab", 4951),
        },
        description="Nations: 14 countries, 55 relations (over 95% inverse relations: a smoke test)",
        reference="filtered MRR / Hits@10: ConvE .82 / 1.00 (ConvE README)",
    ),
    _conve_small(
        "kinship",
        {
            "train.txt": ("738612111a6acf0e39662bde24c7e72a4d1edf20931beea077da367dda689731", 208710),
            "valid.txt": ("c56f8630a583178b1e569f11a64aa535ae1ce0b0912d8b1e24716be2b37f04da", 26088),
            "test.txt": ("05e5733265761d55be9c05bfaff5a8d0808df46f9c1e9d66cc3f2fe114e43d88", 26255),
        },
        description="Kinship: 104 people, 25 relations",
        reference="filtered MRR / Hits@10: ConvE .83 / .98 (ConvE README)",
    ),
    _codex(
        "s",
        {
            "train.txt": ("64f93b7f314f3936a6f65739721429db3f6a7c8f5a1e1104ec3bb544f7434f59", 615428),
            "valid.txt": ("3831c0e57daef03c3a18cdd1a72e370b496f696c5218883d35c7d2ab8a6a772c", 34323),
            "test.txt": ("27127fcb34688c4778e88a39ef3c9b540807da846021e9d9685660ac1838aca1", 34252),
        },
        description="CoDEx-S (Wikidata): 2,034 entities, 42 relations; 32,888 / 1,827 / 1,828 triples",
        reference=(
            "filtered MRR / Hits@10 (CoDEx README, LibKGE): ComplEx .465 / .646, ConvE .444 / .635, "
            "TuckER .444 / .638, RESCAL .404 / .623, TransE .354 / .634"
        ),
    ),
    _codex(
        "m",
        {
            "train.txt": ("d99c3437ab51690391a26d96976adf6e5494dba7ef6902e77000551bfa566556", 3660213),
            "valid.txt": ("11c323096367354940846b9ed940c5dabddc1d20a70474222babe7e7fd28b28d", 203470),
            "test.txt": ("0575ce05e4ce915e395bb4f708e8df9547989dd4c8c71407cbfd78c19daffcf7", 203693),
        },
        description="CoDEx-M (Wikidata): 17,050 entities, 51 relations; 185,584 / 10,310 / 10,311 triples",
        reference=(
            "filtered MRR / Hits@10 (CoDEx README, LibKGE): ComplEx .337 / .476, TuckER .328 / .458, "
            "ConvE .318 / .464, RESCAL .317 / .456, TransE .303 / .454"
        ),
    ),
    _codex_types(),
    _wnut17(),
    _poem_sentiment(),
    # WN18RR and FB15k-237 as ConvE released them (the copies LibKGE and most papers use; WN18RR
    # names WordNet synsets by offset, FB15k-237 has CRLF line ends). The hashes are those of the
    # archive members at the pinned ConvE commit, byte-identical to the shared data folder's copies.
    # Some valid/test triples name entities absent from train, as in every public copy.
    _conve_small(
        "wn18rr",
        {
            "train.txt": ("038612e783c215ee5f3ca9fbfca27b8d0739be1028fe4ee7c174aecf0b83d5df", 3135377),
            "valid.txt": ("453ce7202afa58094a04d2b1560ee2b02660f1c260b32ce6651c8ccedd1028ab", 110415),
            "test.txt": ("0383bceaaa1096cf3c03ec021ed0048068e2355dbfc0239b292cefdac821cec5", 113180),
        },
        description=(
            "WN18RR (WordNet, inverse relations removed): 40,943 entities, 11 relations; 86,835 / 3,034 / 3,134 "
            "triples (210 valid and 210 test triples name an entity not in train)"
        ),
        reference=(
            "filtered MRR / Hits@10: ComplEx .475 / .547 (LibKGE, Ruffinelli et al. 2020); "
            "ConvE .43 / .51 (ConvE README)"
        ),
        archive_name="WN18RR.tar.gz",
        license="WordNet-3.0 (derived from WordNet; ConvE release MIT)",
    ),
    _conve_small(
        "fb15k-237",
        {
            "train.txt": ("6e4c2782169af21e9743f3b1d200886f5d595bf6bc504ec1351720949c5cdfae", 21277292),
            "valid.txt": ("cf6309010852f6a8d47a45df830a426415d1ee6f7a3970a8376ff1fb81db4a5c", 1303101),
            "test.txt": ("5711cf41623ceb4eacc50eb6108a3ca6565c7492e3caaf82a3e355cc660d1574", 1519499),
        },
        description=(
            "FB15k-237 (Freebase, inverse relations removed): 14,541 entities, 237 relations; "
            "272,115 / 17,535 / 20,466 triples (9 valid and 28 test triples name an entity not in train)"
        ),
        reference=(
            "filtered MRR / Hits@10: ComplEx .348 / .536 (LibKGE, Ruffinelli et al. 2020); "
            "ConvE .32 / .49 (ConvE README)"
        ),
        archive_name="FB15k-237.tar.gz",
        license="CC-BY (derived from Freebase; Toutanova & Chen 2015; ConvE release MIT)",
    ),
)

REGISTRY: dict[str, DatasetSpec] = {s.name: s for s in _SPECS}


def list_specs() -> list[DatasetSpec]:
    """All registered data sets, in registry order."""
    return list(REGISTRY.values())


def get_spec(name: str) -> DatasetSpec:
    """The spec named ``name`` (case-insensitive); an unknown name suggests close matches."""
    spec = REGISTRY.get(name.strip().lower())
    if spec is not None:
        return spec
    close = difflib.get_close_matches(name.lower(), REGISTRY, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise DatasetError(f"unknown data set '{name}'; {hint}known: {', '.join(REGISTRY)}")


def spec_for_subdir(subdir: str) -> DatasetSpec | None:
    """The spec whose ``subdir`` is ``subdir`` (used to find auxiliary type data)."""
    return next((s for s in _SPECS if s.subdir == subdir), None)
