"""Sparse upcycling: turn the dense FFNs of a trained model into MoE layers whose experts all
start as copies of that FFN (Komatsuzaki et al., 2022).

Converted FFNs: Hugging Face BERT-style encoders (``BertIntermediate`` + ``BertOutput``, as in
MiniLM) and kelm's GPT blocks (``Linear → GELU → Linear``). Experts are generic two-layer MLPs
with the source's activation (found by evaluating it) and biases. A fresh router with a small
init decides which experts run; with top-k renormalisation the combine weights of a token sum
to one, and since every expert is the same FFN the upcycled model computes exactly what the
dense one did until training makes the experts differ.

Saved folders hold ``model.safetensors`` plus ``config.toml``: a GPT is ``kind = "gpt"`` with a
``[model.moe]`` table (loads with `kelm.lm.gpt.load_gpt`); a Hugging Face model is
``kind = "moe-hf"`` beside its ``config.json`` and tokenizer (loads with `load_upcycled`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kelm.artifacts import read_model_table
from kelm.errors import ConfigError, DataError
from kelm.linking.domains import DomainLexicon, TokenDomainTagger
from kelm.moe.config import MoEConfig
from kelm.moe.experts import ACT
from kelm.moe.layer import MoELayer

UPCYCLE_ROUTER_STD = 0.002


def activation_name(fn: Any) -> str:
    """The kelm name of an activation module or function, found by evaluating it."""
    probe = torch.linspace(-6, 6, 257)
    with torch.no_grad():
        out = fn(probe)
    for name, ref in ACT.items():
        if torch.allclose(out, ref(probe), atol=1e-6, rtol=0):
            return name
    raise ConfigError(f"moe upcycle: unsupported FFN activation {fn!r} (supported: {', '.join(ACT)})")


def _moe_config(d_model: int, d_ff: int, activation: str, bias: bool, settings: dict[str, Any]) -> MoEConfig:
    source = {"d_model": d_model, "d_ff": d_ff, "expert_type": "mlp", "activation": activation, "bias": bias}
    return MoEConfig.from_dict({"router_init_std": UPCYCLE_ROUTER_STD, **settings, **source})


@torch.no_grad()
def _fill(layer: MoELayer, fc_in: nn.Linear, fc_out: nn.Linear) -> None:
    """Every expert becomes a copy of the dense FFN ``fc_out(act(fc_in(x)))``."""
    ex = layer.experts
    ex.w_in.copy_(fc_in.weight.t().unsqueeze(0).expand_as(ex.w_in))
    ex.w_out.copy_(fc_out.weight.t().unsqueeze(0).expand_as(ex.w_out))
    if ex.b_in is not None:
        ex.b_in.copy_(fc_in.bias.unsqueeze(0).expand_as(ex.b_in))
        ex.b_out.copy_(fc_out.bias.unsqueeze(0).expand_as(ex.b_out))


def _bert_layers(model: nn.Module) -> list[nn.Module]:
    """Modules with a BERT-style FFN: ``intermediate.dense`` (+ activation) and ``output.dense``."""
    found = []
    for m in model.modules():
        inter, out = getattr(m, "intermediate", None), getattr(m, "output", None)
        if isinstance(getattr(inter, "dense", None), nn.Linear) and isinstance(getattr(out, "dense", None), nn.Linear):
            found.append(m)
    return found


def _gpt_blocks(model: nn.Module) -> list[nn.Module]:
    from kelm.lm.gpt import Block

    return [m for m in model.modules() if isinstance(m, Block) and isinstance(m.mlp, nn.Sequential)]


def upcycle_bert(model: nn.Module, settings: dict[str, Any], copy_weights: bool = True) -> dict[str, Any]:
    """In place: each BERT layer's ``intermediate`` becomes the identity and ``output.dense`` a MoE
    layer (so ``output`` still applies dropout, the residual and LayerNorm). Returns the MoE table."""
    layers = _bert_layers(model)
    if not layers:
        raise ConfigError(
            "moe upcycle: the model has no FFN blocks to convert "
            "(looked for BERT-style intermediate/output pairs and kelm GPT blocks)"
        )
    table: dict[str, Any] = {}
    for layer in layers:
        fc_in, fc_out = layer.intermediate.dense, layer.output.dense
        act = getattr(layer.intermediate, "intermediate_act_fn", None)
        name = activation_name(act) if act is not None else "gelu"
        cfg = _moe_config(fc_in.in_features, fc_in.out_features, name, fc_in.bias is not None, settings)
        moe = MoELayer(cfg).to(fc_in.weight.device, fc_in.weight.dtype)
        if copy_weights:
            _fill(moe, fc_in, fc_out)
        layer.intermediate = nn.Identity()
        layer.output.dense = moe
        table = {k: v for k, v in cfg.to_dict().items() if k != "d_model" and v is not None}
    return table


def upcycle_gpt(model: nn.Module, settings: dict[str, Any]) -> nn.Module:
    """A new kelm GPT whose blocks' FFNs are MoE layers initialised from ``model``'s dense FFNs."""
    from kelm.lm.gpt import GPT, GPTConfig

    blocks = _gpt_blocks(model)
    if not isinstance(model, GPT) or not blocks:
        raise ConfigError("moe upcycle: the GPT has no dense FFN blocks to convert")
    fc_in, act = blocks[0].mlp[0], blocks[0].mlp[1]
    cfg = _moe_config(fc_in.in_features, fc_in.out_features, activation_name(act), True, settings)
    table = {k: v for k, v in cfg.to_dict().items() if k != "d_model" and v is not None}
    sparse = GPT(GPTConfig(**{**model.cfg.to_dict(), "moe": table}))
    dense_sd = {k: v for k, v in model.state_dict().items() if ".mlp." not in k}
    missing, _ = sparse.load_state_dict(dense_sd, strict=False)
    assert all(".mlp." in k for k in missing), missing
    for src, dst in zip(blocks, sparse.blocks, strict=True):
        _fill(dst.mlp, src.mlp[0], src.mlp[2])
    return sparse


def load_source(source: str) -> tuple[str, nn.Module, Any]:
    """(kind, model, tokenizer or None) for ``minilm``, a Hugging Face folder or a kelm GPT model/run folder."""
    from kelm.lm.checkpoints import MINILM, minilm_path, quiet

    path = Path(minilm_path() if source == MINILM else source).expanduser()
    if not path.exists():
        raise ConfigError(f"moe upcycle: --model {source}: no such folder")
    for folder in (path / "model", path):
        toml = folder / "config.toml"
        if toml.is_file() and not (folder / "config.json").is_file():
            from kelm.lm.gpt import load_gpt

            spec = _read_spec(folder)
            if spec.get("kind") != "gpt":
                raise ConfigError(f"moe upcycle: {folder} holds a '{spec.get('kind')}' model, not a GPT or encoder")
            if spec.get("moe"):
                raise ConfigError(f"moe upcycle: {folder} is already a mixture-of-experts model")
            return "gpt", load_gpt(folder), None
    folder = path / "model" if (path / "model" / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        raise ConfigError(f"moe upcycle: {path} is neither a Hugging Face checkpoint nor a kelm GPT model folder")
    from transformers import AutoModel, AutoTokenizer

    with quiet():
        try:
            model = AutoModel.from_pretrained(str(folder), use_safetensors=True)
        except (OSError, ValueError) as err:
            raise ConfigError(f"moe upcycle: cannot load {folder} ({str(err).splitlines()[0]})") from None
        try:
            tok = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError):
            tok = None
    return "hf", model, tok


def _read_spec(folder: Path) -> dict[str, Any]:
    """The ``[model]`` table of a kelm model folder (`kelm.artifacts`)."""
    return read_model_table(folder)


def upcycle(source: str, out: str | Path, settings: dict[str, Any], domains: str | None = None) -> dict[str, Any]:
    """Upcycle ``source`` and save it into ``out``; returns a summary. ``domains`` (a KG source such
    as ``umls``) turns on knowledge-guided routing: the lexicon is stored in ``config.json`` and
    every forward pass links its input and feeds the entities' domains to the routers."""
    from kelm.artifacts import write_toml

    kind, model, tok = load_source(source)
    lexicon = None
    if domains is not None:
        if kind != "hf":
            raise ConfigError(
                "moe upcycle: --domains applies to Hugging Face encoders; "
                "GPTs take task.moe_domain_routing when trained"
            )
        from kelm.linking.domains import load_lexicon

        lexicon = load_lexicon(domains)
        settings = {**settings, "n_domains": len(lexicon.names)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "gpt":
        sparse = upcycle_gpt(model, settings)
        _save_weights(sparse, out)
        write_toml(out / "config.toml", {"model": {"kind": "gpt", **sparse.cfg.to_dict()}})
        n_layers, table = len(sparse.blocks), sparse.cfg.moe or {}
        params = sum(p.numel() for p in sparse.parameters())
    else:
        table = upcycle_bert(model, settings)
        _save_weights(model, out)
        model.config.kelm_moe = table  # config.json travels with fine-tuned copies too
        if lexicon is not None:
            model.config.kelm_domains = lexicon.to_dict()
        from kelm.lm.checkpoints import save_hf_config

        save_hf_config(out, model.config)  # a model_type only kelm loads: never a dense model by mistake
        if tok is not None:
            tok.save_pretrained(str(out))
        write_toml(out / "config.toml", {"model": {"kind": "moe-hf", "hf_class": type(model).__name__, "moe": table}})
        n_layers = len(_moe_layers(model))
        params = sum(p.numel() for p in model.parameters())
    return {"source": source, "kind": kind, "moe_layers": n_layers, "parameters": params, "moe": table, "out": str(out)}


def _moe_layers(model: nn.Module) -> list[MoELayer]:
    return [m for m in model.modules() if isinstance(m, MoELayer)]


def _save_weights(model: nn.Module, out: Path) -> None:
    from safetensors.torch import save_model

    from kelm.atomic import atomic_path

    with atomic_path(out / "model.safetensors") as tmp:
        save_model(model, str(tmp))


def upcycled_table(folder: str | Path) -> dict[str, Any] | None:
    """The MoE table an upcycled Hugging Face checkpoint records in its ``config.json``, or None
    (not a folder, or a dense model)."""
    import json

    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text(encoding="utf-8")).get("kelm_moe")
    except (OSError, ValueError, AttributeError):
        return None
    if table is None and (path.parent / "config.toml").is_file():  # written before config.json held it
        spec = _read_spec(path.parent)
        table = spec.get("moe") if spec.get("kind") == "moe-hf" else None
    return dict(table) if isinstance(table, dict) else None


def load_upcycled_hf(cls: Any, folder: str | Path, **config_kwargs: Any) -> nn.Module:
    """An upcycled (or fine-tuned upcycled) Hugging Face checkpoint as ``cls`` (an ``AutoModelFor*``
    class): the model built from ``config.json``, its FFNs turned into MoE layers, then the weights
    loaded, into the base model when the file holds no head. A new head keeps torch's init. The
    MoE auxiliary losses reach the router through the backward pass (`MoELayer.aux_in_backward`),
    since fine-tuning tasks compute their own loss. Nothing is read under a ``meta`` device."""
    from safetensors.torch import load_file

    from kelm.lm.checkpoints import load_hf_config, quiet

    folder = Path(folder)
    table = upcycled_table(folder)
    if table is None:
        raise DataError("not an upcycled model (config.json has no kelm_moe table)", folder / "config.json")
    with quiet():
        model = cls.from_config(load_hf_config(folder, **config_kwargs))
    upcycle_bert(model, table, copy_weights=False)
    for layer in _moe_layers(model):
        layer.aux_in_backward = True
    _attach_domains(model, folder)
    if torch.get_default_device().type == "meta":
        return model
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise DataError("missing model.safetensors", folder)
    state = load_file(str(weights))
    own = model.state_dict()
    target = model if any(k in own for k in state) else model.base_model
    target_keys = target.state_dict().keys()
    missing = [k for k in target_keys if k not in state and (".experts." in k or ".router." in k)]
    if missing or not any(k in target_keys for k in state):
        raise DataError(f"the weights do not fit the upcycled model (missing {missing[:2]})", weights)
    target.load_state_dict({k: v for k, v in state.items() if k in target_keys}, strict=False)
    return model


def _attach_domains(model: nn.Module, folder: Path) -> None:
    """Knowledge-guided routing when the checkpoint's ``config.json`` holds a domain lexicon."""
    lexicon = getattr(model.config, "kelm_domains", None)
    if not lexicon:
        return
    from transformers import AutoTokenizer

    from kelm.linking.domains import DomainLexicon

    attach_domain_routing(model, DomainLexicon.from_dict(lexicon), AutoTokenizer.from_pretrained(str(folder)))


def load_upcycled(folder: str | Path) -> nn.Module:
    """Rebuild a saved upcycled model (either kind) and load its weights; eval mode."""
    from safetensors.torch import load_model

    folder = Path(folder)
    spec = _read_spec(folder)
    if spec.get("kind") == "gpt":
        from kelm.lm.gpt import load_gpt

        return load_gpt(folder).eval()
    if spec.get("kind") != "moe-hf":
        raise DataError(f"not an upcycled model folder (kind {spec.get('kind')!r})", folder / "config.toml")
    import transformers

    from kelm.lm.checkpoints import load_hf_config, quiet

    with quiet():
        config = load_hf_config(folder)
        cls = getattr(transformers, spec.get("hf_class", "AutoModel"), transformers.AutoModel)
        model = cls.from_config(config) if cls is transformers.AutoModel else cls(config)
    upcycle_bert(model, dict(spec.get("moe", {})), copy_weights=False)
    load_model(model, str(folder / "model.safetensors"))
    _attach_domains(model, folder)
    return model.eval()


def attach_domain_routing(model: torch.nn.Module, lexicon: DomainLexicon, tokenizer: Any) -> Any:
    """Knowledge-guided routing for a model called with ``input_ids`` (a Hugging Face encoder with
    MoE layers): before each forward pass the token ids are linked and every MoE layer gets their
    domains. Returns the hook handle."""
    from kelm.moe.layer import moe_layers

    layers = moe_layers(model)
    tagger = TokenDomainTagger(lexicon, tokenizer)

    def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        domains = tagger(ids) if isinstance(ids, torch.Tensor) else None
        for layer in layers:
            layer.context_domains = domains

    return model.register_forward_pre_hook(hook, with_kwargs=True)
