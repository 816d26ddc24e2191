"""Knowledge-graph embedding scorers: TransE, DistMult, ComplEx, RotatE and RESCAL.

Every model maps entity and relation ids to embeddings and scores triples; higher means more
plausible. A model is one small class: it sets ``name``, implements ``interact`` (elementwise over
broadcast leading axes, features on the last axis). A model linear in the tail (head) returns the
query vector ``q`` from ``_tail_query`` (``_head_query``), and scoring many candidates becomes one
matmul (a batched one for per-row candidates); distance models override ``_tails`` / ``_heads``.

Dropout acts on the embeddings of the query side (and on all three in ``score_hrt``) while training;
candidate tables in 1-N scoring are used as they are.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from kelm.errors import ConfigError
from kelm.kge.candidate_scores import gathered_scores
from kelm.kge.losses import all_entity_loss, one_to_n_loss
from kelm.kge.modulus_distance import gathered_modulus_distances, modulus_distances
from kelm.kge.sharded import ShardedEmbedding, entity_table
from kelm.registry import Registry
from kelm.train.sparse_grads import emits_sparse_grads

# Upper bound on elements of the (B, chunk, D) intermediates in broadcast 1-N scoring.
_CHUNK_ELEMENTS = 2**24
# Per-row candidates of a linear model are scored by one matmul against the whole entity table,
# then gathered, when the table has at most this many entities per candidate: a GEMM over E rows
# beats gathering and multiplying (B, C, D) embeddings, which is memory-bound, up to about E = 45 C
# on a CPU core (bench: B = 256, C = 33, D = 256).
DENSE_CANDIDATE_FACTOR = 32


def _over_candidates(fn: Callable[[Tensor], Tensor], cands_CD: Tensor, rows: int) -> Tensor:
    """``fn`` over slices of the candidate table, concatenated to ``(rows, C)``; bounds intermediates."""
    step = max(1, _CHUNK_ELEMENTS // max(1, rows * cands_CD.shape[-1]))
    parts = cands_CD.split(step) or (cands_CD,)
    return torch.cat([fn(c) for c in parts], dim=1)


def _pairwise_distance(q_BD: Tensor, c_CD: Tensor, p: float) -> Tensor:
    """``(B, C)`` p-norm distances; p=2 via |a|^2 + |b|^2 - 2ab (one matmul), else ``torch.cdist``."""
    if p == 2:
        sq_BC = q_BD.pow(2).sum(-1, keepdim=True) + c_CD.pow(2).sum(-1) - 2 * q_BD @ c_CD.T
        return sq_BC.clamp_min(1e-12).sqrt()
    return torch.cdist(q_BD.unsqueeze(0), c_CD.unsqueeze(0), p=p).squeeze(0)


def _complex_mul(a: Tensor, b: Tensor, *, conj_b: bool = False) -> Tensor:
    """Product of complex vectors stored as [real half, imaginary half] on the last axis."""
    a_re, a_im = a.chunk(2, dim=-1)
    b_re, b_im = b.chunk(2, dim=-1)
    if conj_b:
        b_im = -b_im
    return torch.cat((a_re * b_re - a_im * b_im, a_re * b_im + a_im * b_re), dim=-1)


def _complex_sq_modulus(x: Tensor) -> Tensor:
    """``|z|^2`` per complex coordinate of a [real half, imaginary half] vector."""
    re, im = x.chunk(2, dim=-1)
    return re.pow(2) + im.pow(2)


class KGEModel(nn.Module):
    """Base scorer with an entity table ``(E, dim)`` and a relation table ``(R, relation_dim(dim))``."""

    name: str = ""
    even_dim: bool = False  # complex models store a [real, imaginary] pair per coordinate
    linear: bool = False  # scores are <q, t> and <q, h>: `_tail_query` / `_head_query` exist

    def __init__(self, num_entities: int, num_relations: int, dim: int, *, dropout: float = 0.0):
        super().__init__()
        if dim < 1:
            raise ConfigError(f"model.dim must be positive, got {dim}")
        if self.even_dim and dim % 2:
            raise ConfigError(
                f"model.dim must be even for {self.name}, got {dim} "
                "(dim counts real parameters; each complex coordinate takes two)"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {dropout}")
        self.num_entities, self.num_relations, self.dim = num_entities, num_relations, dim
        self.entity = entity_table(num_entities, dim)  # this rank's rows inside `entity_shards`
        self.relation = nn.Embedding(num_relations, self.relation_dim(dim))
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def relation_dim(self, dim: int) -> int:
        return dim

    def reset_parameters(self) -> None:
        """Entities, then relations, from the global random stream (a sharded table draws the
        whole table's values and keeps its rows, so it starts as one process would)."""
        if isinstance(self.entity, ShardedEmbedding):
            self.entity.reset_rows(self.init_entities)
        else:
            self.init_entities(self.entity.weight)
        self.init_relations(self.relation.weight)

    def init_entities(self, table: Tensor) -> None:
        nn.init.normal_(table, std=self.dim**-0.5)

    def init_relations(self, table: Tensor) -> None:
        nn.init.normal_(table, std=self.dim**-0.5)

    @property
    def sparse_table_grads(self) -> bool:
        """True when lookups of the entity table give row-sparse gradients (`kelm.train.sparse_grads`):
        kernels that take the table itself then give sparse ones too."""
        return emits_sparse_grads(self.entity)

    @property
    def sharded(self) -> bool:
        """True when the entity table is sharded over several ranks (every lookup is collective)."""
        return isinstance(self.entity, ShardedEmbedding) and self.entity.shards.world > 1

    def _against_all(self, fn: Callable[[Tensor, Tensor, Tensor], Tensor], a: Tensor, b: Tensor) -> Tensor:
        """``fn(a, b, table)`` against every entity, the table whole or sharded."""
        if isinstance(self.entity, ShardedEmbedding):
            return self.entity.score_all(fn, a, b)
        return fn(a, b, self.entity.weight)

    # -- per-model pieces ------------------------------------------------------------------------

    def interact(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        """Scores of broadcast embeddings ``(..., D)``, ``(..., X)``, ``(..., D)`` → ``(...)``."""
        raise NotImplementedError

    def _tail_query(self, h_BD: Tensor, r_BX: Tensor) -> Tensor | None:
        """``q`` with ``score(h, r, t) = <q, t>`` for models linear in ``t``, else None."""
        return None

    def _head_query(self, r_BX: Tensor, t_BD: Tensor) -> Tensor | None:
        """``q`` with ``score(h, r, t) = <q, h>`` for models linear in ``h``, else None."""
        return None

    def _tails(self, h_BD: Tensor, r_BX: Tensor, t_CD: Tensor) -> Tensor:
        """``(B, C)`` scores of a shared candidate table: one matmul for linear models."""
        q_BD = self._tail_query(h_BD, r_BX)
        if q_BD is not None:
            return q_BD @ t_CD.T
        return _over_candidates(lambda t: self.interact(h_BD[:, None], r_BX[:, None], t[None]), t_CD, len(h_BD))

    def _heads(self, r_BX: Tensor, t_BD: Tensor, h_CD: Tensor) -> Tensor:
        """``(B, C)`` scores of a shared candidate head table: one matmul for linear models."""
        q_BD = self._head_query(r_BX, t_BD)
        if q_BD is not None:
            return q_BD @ h_CD.T
        return _over_candidates(lambda h: self.interact(h[None], r_BX[:, None], t_BD[:, None]), h_CD, len(t_BD))

    def _tails_each(self, h_BD: Tensor, r_BX: Tensor, t_BCD: Tensor) -> Tensor:
        """``(B, C)`` scores of per-row candidate tails (linear models use `gathered_scores`)."""
        return self.interact(h_BD[:, None], r_BX[:, None], t_BCD)

    def _heads_each(self, r_BX: Tensor, t_BD: Tensor, h_BCD: Tensor) -> Tensor:
        """``(B, C)`` scores of per-row candidate heads (linear models use `gathered_scores`)."""
        return self.interact(h_BCD, r_BX[:, None], t_BD[:, None])

    def _tails_from_table(self, h_BD: Tensor, r_BX: Tensor, idx_BC: Tensor) -> Tensor:
        """``(B, C)`` scores of per-row candidate tails ``idx_BC`` of the (unsharded) entity table."""
        return self._tails_each(h_BD, r_BX, self.entity(idx_BC))

    def _heads_from_table(self, r_BX: Tensor, t_BD: Tensor, idx_BC: Tensor) -> Tensor:
        """``(B, C)`` scores of per-row candidate heads ``idx_BC`` of the (unsharded) entity table."""
        return self._heads_each(r_BX, t_BD, self.entity(idx_BC))

    def _sq_magnitudes(self, h_BD: Tensor, r_BX: Tensor, t_BD: Tensor) -> list[Tensor]:
        """Squared magnitudes of the parameters the regularizer penalizes."""
        return [h_BD.pow(2), r_BX.pow(2), t_BD.pow(2)]

    # -- public scoring --------------------------------------------------------------------------

    def _ent(self, idx: Tensor) -> Tensor:
        return self.dropout(self.entity(idx))

    def _rel(self, idx: Tensor) -> Tensor:
        return self.dropout(self.relation(idx))

    def score_hrt(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        """``(B,)`` scores of the triples ``(h[i], r[i], t[i])``."""
        return self.interact(self._ent(h), self._rel(r), self._ent(t))

    def score_t(self, h: Tensor, r: Tensor, candidates: Tensor | None = None) -> Tensor:
        """Scores over tails: ``(B, E)`` for all entities, ``(B, C)`` for ``candidates`` ``(C,)`` or ``(B, C)``."""
        h_BD, r_BX = self._ent(h), self._rel(r)
        if candidates is None:
            return self._against_all(self._tails, h_BD, r_BX)
        if candidates.dim() == 1:
            return self._tails(h_BD, r_BX, self.entity(candidates))
        if self._dense_cheaper(candidates):
            return self._tails(h_BD, r_BX, self.entity.weight).gather(1, candidates)
        q_BD = self._tail_query(h_BD, r_BX)
        if self.sharded:
            return self._fetched_each(q_BD, candidates, lambda t_BCD: self._tails_each(h_BD, r_BX, t_BCD))
        if q_BD is not None:
            return gathered_scores(q_BD, self.entity.weight, candidates, sparse_grad=self.sparse_table_grads)
        return self._tails_from_table(h_BD, r_BX, candidates)

    def score_h(self, r: Tensor, t: Tensor, candidates: Tensor | None = None) -> Tensor:
        """Scores over heads: ``(B, E)`` for all entities, ``(B, C)`` for ``candidates`` ``(C,)`` or ``(B, C)``."""
        r_BX, t_BD = self._rel(r), self._ent(t)
        if candidates is None:
            return self._against_all(self._heads, r_BX, t_BD)
        if candidates.dim() == 1:
            return self._heads(r_BX, t_BD, self.entity(candidates))
        if self._dense_cheaper(candidates):
            return self._heads(r_BX, t_BD, self.entity.weight).gather(1, candidates)
        q_BD = self._head_query(r_BX, t_BD)
        if self.sharded:
            return self._fetched_each(q_BD, candidates, lambda h_BCD: self._heads_each(r_BX, t_BD, h_BCD))
        if q_BD is not None:
            return gathered_scores(q_BD, self.entity.weight, candidates, sparse_grad=self.sparse_table_grads)
        return self._heads_from_table(r_BX, t_BD, candidates)

    def loss_all(
        self, e: Tensor, r: Tensor, is_tail: Tensor, rows: Tensor, cols: Tensor, kind: str, eps: float
    ) -> Tensor:
        """The 1-N loss (`kelm.kge.losses`) of queries over all entities: ``(e, r, ?)`` where
        ``is_tail``, ``(?, r, e)`` elsewhere; their true answers are at ``(rows, cols)``.

        A linear model never builds the ``(B, E)`` scores (`all_entity_loss`); others score
        all entities and take `one_to_n_loss` of them.
        """
        if self.linear:
            e_BD, r_BX = self._ent(e), self._rel(r)
            if bool(is_tail.all()):
                q_BD = self._tail_query(e_BD, r_BX)
            else:
                q_BD = torch.where(is_tail[:, None], self._tail_query(e_BD, r_BX), self._head_query(r_BX, e_BD))
            return all_entity_loss(q_BD, self.entity.weight, rows, cols, kind, eps)
        scores = torch.empty(len(e), self.num_entities, device=e.device)
        tail, head = is_tail, ~is_tail
        if bool(tail.any()):
            scores[tail] = self.score_t(e[tail], r[tail]).float()
        if bool(head.any()):
            scores[head] = self.score_h(r[head], e[head]).float()
        return one_to_n_loss(scores, rows, cols, kind, eps)

    def _fetched_each(self, q_BD: Tensor | None, candidates_BC: Tensor, each: Callable[[Tensor], Tensor]) -> Tensor:
        """Per-row candidates of a sharded table: their rows come through the exchange, then one
        batched matmul scores them (linear models, query ``q_BD``) or ``each`` does."""
        rows_BCD = self.entity(candidates_BC)
        if q_BD is not None:
            return torch.bmm(rows_BCD, q_BD.unsqueeze(-1)).squeeze(-1)
        return each(rows_BCD)

    def _dense_cheaper(self, candidates_BC: Tensor) -> bool:
        if self.sharded:
            return False
        return self.linear and self.num_entities <= DENSE_CANDIDATE_FACTOR * candidates_BC.shape[1]

    def regularizer(self, h: Tensor, r: Tensor, t: Tensor, kind: str, p: int = 3) -> Tensor:
        """Scalar penalty on the batch's embeddings, divided by the batch size.

        ``"n3"``: sum of ``|x|^p`` (Lacroix et al. 2018; moduli for complex coordinates).
        ``"l2"``: sum of ``x^2``.
        """
        if kind not in ("n3", "l2"):
            raise ConfigError(f"unknown regularizer {kind!r}; expected one of: l2, n3")
        parts = self._sq_magnitudes(self.entity(h), self.relation(r), self.entity(t))
        power = p / 2 if kind == "n3" else 1.0
        total = sum((m.pow(power).sum() for m in parts), start=torch.zeros((), device=self.entity.weight.device))
        return total / max(1, len(h))


class TransE(KGEModel):
    """``-||h + r - t||_p`` (Bordes et al. 2013)."""

    name = "transe"

    def __init__(self, num_entities: int, num_relations: int, dim: int, *, dropout: float = 0.0, p: float = 1.0):
        if p <= 0:
            raise ConfigError(f"model.p must be positive for transe, got {p}")
        super().__init__(num_entities, num_relations, dim, dropout=dropout)
        self.p = p

    def init_entities(self, table: Tensor) -> None:
        bound = 6 / math.sqrt(self.dim)
        nn.init.uniform_(table, -bound, bound)

    def init_relations(self, table: Tensor) -> None:
        self.init_entities(table)

    def interact(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        return -torch.linalg.vector_norm(h + r - t, ord=self.p, dim=-1)

    def _tails(self, h_BD: Tensor, r_BX: Tensor, t_CD: Tensor) -> Tensor:
        return -_pairwise_distance(h_BD + r_BX, t_CD, self.p)

    def _heads(self, r_BX: Tensor, t_BD: Tensor, h_CD: Tensor) -> Tensor:
        return -_pairwise_distance(t_BD - r_BX, h_CD, self.p)


class DistMult(KGEModel):
    """``<h, r, t>`` (Yang et al. 2015)."""

    name = "distmult"
    linear = True

    def interact(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        return (h * r * t).sum(-1)

    def _tail_query(self, h_BD: Tensor, r_BX: Tensor) -> Tensor:
        return h_BD * r_BX

    def _head_query(self, r_BX: Tensor, t_BD: Tensor) -> Tensor:
        return r_BX * t_BD


class ComplEx(KGEModel):
    """``Re(<h, r, conj(t)>)`` (Trouillon et al. 2016).

    ``dim`` counts real parameters: each embedding is ``dim / 2`` complex numbers stored as
    [real half, imaginary half].
    """

    name = "complex"
    linear = True
    even_dim = True

    def interact(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        return (_complex_mul(h, r) * t).sum(-1)

    def _tail_query(self, h_BD: Tensor, r_BX: Tensor) -> Tensor:
        return _complex_mul(h_BD, r_BX)

    def _head_query(self, r_BX: Tensor, t_BD: Tensor) -> Tensor:
        # Re(h * q) with q = r * conj(t) is <h, conj(q)> over [real, imaginary] halves.
        return _complex_mul(t_BD, r_BX, conj_b=True)

    def _sq_magnitudes(self, h_BD: Tensor, r_BX: Tensor, t_BD: Tensor) -> list[Tensor]:
        return [_complex_sq_modulus(x) for x in (h_BD, r_BX, t_BD)]


class RotatE(KGEModel):
    """``-||h ∘ r - t||`` with ``|r_k| = 1`` (Sun et al. 2019); the margin belongs to the loss.

    ``dim`` counts real parameters of an entity (``dim / 2`` complex coordinates, [real half,
    imaginary half]); a relation is ``dim / 2`` phases. The norm is ``p`` over coordinate moduli
    (``p=1`` as in the paper).
    """

    name = "rotate"
    even_dim = True

    def __init__(
        self,
        num_entities: int,
        num_relations: int,
        dim: int,
        *,
        dropout: float = 0.0,
        p: float = 1.0,
        init_range: float | None = None,
    ):
        if p <= 0:
            raise ConfigError(f"model.p must be positive for rotate, got {p}")
        if init_range is not None and init_range <= 0:
            raise ConfigError(f"model.init_range must be positive for rotate, got {init_range}")
        self.init_range = init_range
        super().__init__(num_entities, num_relations, dim, dropout=dropout)
        self.p = p

    def relation_dim(self, dim: int) -> int:
        return dim // 2

    def init_entities(self, table: Tensor) -> None:
        """Uniform in ``±init_range`` when given (the paper: ``(margin + 2) / (dim / 2)``), else normal."""
        if self.init_range is None:
            super().init_entities(table)
        else:
            nn.init.uniform_(table, -self.init_range, self.init_range)

    def init_relations(self, table: Tensor) -> None:
        nn.init.uniform_(table, -math.pi, math.pi)

    def rotation(self, r: Tensor) -> Tensor:
        """Unit-modulus complex rotations ``(B, dim / 2)`` of relations ``r``."""
        phase = self.relation(r)
        return torch.polar(torch.ones_like(phase), phase)

    def _rel(self, idx: Tensor) -> Tensor:
        phase = self.relation(idx)  # no dropout: it would break the unit modulus
        return torch.cat((phase.cos(), phase.sin()), dim=-1)

    def _distance(self, diff_re: Tensor, diff_im: Tensor) -> Tensor:
        """p-norm over coordinates of the complex moduli; the clamp keeps gradients finite at 0."""
        moduli = (diff_re.square() + diff_im.square()).clamp_min(1e-18).sqrt()
        return moduli.sum(-1) if self.p == 1 else torch.linalg.vector_norm(moduli, ord=self.p, dim=-1)

    def interact(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        return -self._distance(*(_complex_mul(h, r) - t).chunk(2, dim=-1))

    def _all_distances(self, q_BD: Tensor, c_CD: Tensor) -> Tensor:
        if self.p == 2:  # the complex 2-norm is the real 2-norm of [real, imaginary]
            return _pairwise_distance(q_BD, c_CD, 2)
        if self.p == 1:
            return modulus_distances(q_BD, c_CD)
        q_re, q_im = q_BD[:, None].chunk(2, dim=-1)

        def block(c_KD: Tensor) -> Tensor:
            c_re, c_im = c_KD[None].chunk(2, dim=-1)
            return self._distance(q_re - c_re, q_im - c_im)

        return _over_candidates(block, c_CD, len(q_BD))

    def _tails(self, h_BD: Tensor, r_BX: Tensor, t_CD: Tensor) -> Tensor:
        return -self._all_distances(_complex_mul(h_BD, r_BX), t_CD)

    def _heads(self, r_BX: Tensor, t_BD: Tensor, h_CD: Tensor) -> Tensor:
        # |h ∘ r - t| = |h - t ∘ conj(r)| because |r_k| = 1.
        return -self._all_distances(_complex_mul(t_BD, r_BX, conj_b=True), h_CD)

    def _tails_from_table(self, h_BD: Tensor, r_BX: Tensor, idx_BC: Tensor) -> Tensor:
        if self.p != 1:
            return super()._tails_from_table(h_BD, r_BX, idx_BC)
        q_BD = _complex_mul(h_BD, r_BX)
        return -gathered_modulus_distances(q_BD, self.entity.weight, idx_BC, sparse_grad=self.sparse_table_grads)

    def _heads_from_table(self, r_BX: Tensor, t_BD: Tensor, idx_BC: Tensor) -> Tensor:
        if self.p != 1:
            return super()._heads_from_table(r_BX, t_BD, idx_BC)
        q_BD = _complex_mul(t_BD, r_BX, conj_b=True)
        return -gathered_modulus_distances(q_BD, self.entity.weight, idx_BC, sparse_grad=self.sparse_table_grads)

    def _sq_magnitudes(self, h_BD: Tensor, r_BX: Tensor, t_BD: Tensor) -> list[Tensor]:
        return [_complex_sq_modulus(h_BD), _complex_sq_modulus(t_BD)]  # rotations have modulus 1


class RESCAL(KGEModel):
    """``h^T M_r t`` with a full ``dim x dim`` matrix per relation (Nickel et al. 2011)."""

    name = "rescal"
    linear = True

    def relation_dim(self, dim: int) -> int:
        return dim * dim

    def _matrix(self, r: Tensor) -> Tensor:
        return r.unflatten(-1, (self.dim, self.dim))

    def interact(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        hM = torch.matmul(h.unsqueeze(-2), self._matrix(r)).squeeze(-2)
        return (hM * t).sum(-1)

    def _tail_query(self, h_BD: Tensor, r_BX: Tensor) -> Tensor:
        return torch.bmm(h_BD.unsqueeze(1), self._matrix(r_BX)).squeeze(1)

    def _head_query(self, r_BX: Tensor, t_BD: Tensor) -> Tensor:
        return torch.bmm(self._matrix(r_BX), t_BD.unsqueeze(-1)).squeeze(-1)


#: KGE model name → class (`kelm.registry` idiom; a plug-in registers its own).
KGE_MODELS: Registry[type[KGEModel]] = Registry(
    "KGE model",
    {
        "transe": "kelm.kge.models:TransE",
        "distmult": "kelm.kge.models:DistMult",
        "complex": "kelm.kge.models:ComplEx",
        "rotate": "kelm.kge.models:RotatE",
        "rescal": "kelm.kge.models:RESCAL",
    },
)


def build_kge_model(name: str, num_entities: int, num_relations: int, dim: int, **kwargs: object) -> KGEModel:
    """Instantiate ``KGE_MODELS[name]``; unknown names and options raise ``ConfigError``."""
    cls = KGE_MODELS.get(name.lower(), "model.name")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "num_entities", "num_relations", "dim"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(
            f"model options {', '.join(unknown)} are not valid for {cls.name}; accepted: {', '.join(sorted(accepted))}"
        )
    return cls(num_entities, num_relations, dim, **kwargs)  # type: ignore[arg-type]
