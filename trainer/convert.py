"""Weights in and out: `python -m trainer.convert --from FORMAT --to FORMAT IN OUT [--tokenizer FILE]`.

Formats:
- `ours`: one file saved by this project with torch.save: a training checkpoint (weights under `model`,
  config under `model_config`), a weights-only file with those two keys (what `--to ours` writes), or a
  plain `Transformer.state_dict()` with Meta-style `params.json` beside it.
- `meta`: Meta's release directory: `params.json` and `consolidated.NN.pth`, one file per model-parallel
  rank (13B: 2, 33B: 4, 65B: 8), merged on reading; written as one file.
- `hf`: a Hugging Face `LlamaForCausalLM` directory: `config.json`, `model.safetensors` (or shards listed in
  `model.safetensors.index.json`) and the SentencePiece tokenizer (`tokenizer.model`, `tokenizer_config.json`),
  loadable with `transformers.LlamaForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`.

Our weight names are Meta's. Hugging Face renames them and stores the rows of wq and wk permuted for its
rotate-half RoPE (transformers' convert_llama_weights_to_hf.py); reading inverts that permutation, so a
round trip ours → hf → ours gives back the same tensors bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tokenizer.shards import tokenizer_hash
from trainer.model import ModelConfig, Transformer, rope_table

FORMATS = ("ours", "meta", "hf")

# Meta's fairscale layers: ColumnParallelLinear splits the output rows (dim 0), RowParallelLinear the input
# columns (dim 1), ParallelEmbedding the embedding width (dim 1); the RMSNorm gains are replicated.
META_SPLIT_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}
META_DROPPED = {"rope.freqs"}  # Meta's RoPE table, recomputed from the config

HF_TOP = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
          "output.weight": "lm_head.weight"}
HF_LAYER = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
            "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
            "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj", "feed_forward.w3": "mlp.up_proj",
            "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
HF_SHARD_BYTES = 5 * 2**30  # Hugging Face's default largest safetensors file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Weights:
    """A model in our names: its config, its state dict, and the SentencePiece model that goes with it, if known."""

    def __init__(self, cfg: ModelConfig, state_dict: dict[str, torch.Tensor], tokenizer: Path | None = None,
                 tokenizer_sha256: str | None = None):
        self.cfg, self.state_dict, self.tokenizer = cfg, state_dict, tokenizer
        self.tokenizer_sha256 = tokenizer_sha256 or (tokenizer_hash(tokenizer).hex() if tokenizer else None)
        check_state_dict(cfg, state_dict)

    def model(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Transformer:
        """The Transformer on `device` in `dtype`, never first built in float32 (a 13B model fits a GPU in bf16
        where its float32 copy would not); the RoPE tables stay float32 as in training. Where device and dtype are
        those of the state dict, the model's parameters are its tensors, not copies."""
        with torch.device("meta"):
            model = Transformer(self.cfg)
        model.load_state_dict(self.state_dict, assign=True)
        cos, sin = rope_table(self.cfg.head_dim, self.cfg.max_seq_len, self.cfg.rope_theta)
        model.rope_cos, model.rope_sin = cos, sin
        model.to(device=device, dtype=dtype)
        model.rope_cos, model.rope_sin = cos.to(device), sin.to(device)
        return model.eval()


def check_state_dict(cfg: ModelConfig, state_dict: dict[str, torch.Tensor]) -> None:
    """Refuses weights whose names or shapes are not those of `Transformer(cfg)`, naming what differs."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Transformer(cfg).state_dict().items()}
    missing, unexpected = sorted(expected.keys() - state_dict.keys()), sorted(state_dict.keys() - expected.keys())
    wrong = [f"{k} {tuple(state_dict[k].shape)} (expected {expected[k]})"
             for k in sorted(expected.keys() & state_dict.keys()) if tuple(state_dict[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        raise ValueError(f"weights do not fit {cfg}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                         f"wrong shapes {wrong[:5]}")


def ffn_multiple_of(dim: int, hidden: int, preferred: int | None = None) -> int:
    """The `multiple_of` for which ModelConfig.ffn_hidden is `hidden` (LLaMA's 256 where it fits)."""
    for multiple in (preferred, 256, 128, 64, 32, 16, 8, 4, 2, 1, hidden):
        if multiple and replace(ModelConfig(dim=dim), multiple_of=multiple).ffn_hidden == hidden:
            return multiple
    raise ValueError(f"a feed-forward width of {hidden} for dim {dim} is not LLaMA's multiple_of(2/3·4d) rule "
                     "(e.g. Llama 2 70B's ffn_dim_multiplier): trainer.model cannot hold it")


def config_from_params(params: dict, state_dict: dict[str, torch.Tensor], max_seq_len: int | None) -> ModelConfig:
    """A ModelConfig from Meta's params.json (our field names are Meta's); sizes it leaves out (vocab_size -1,
    the feed-forward width) come from the weights."""
    known = {f.name for f in fields(ModelConfig)}
    values = {k: v for k, v in params.items() if k in known and v is not None}
    values["vocab_size"] = state_dict["tok_embeddings.weight"].shape[0]
    values["multiple_of"] = ffn_multiple_of(params["dim"], state_dict["layers.0.feed_forward.w1.weight"].shape[0],
                                            params.get("multiple_of"))
    if max_seq_len:
        values["max_seq_len"] = max_seq_len
    return ModelConfig(**values)


def meta_params(cfg: ModelConfig) -> dict:
    """params.json as Meta writes it: Meta's ModelArgs(**params) refuses fields its version lacks (LLaMA 1 has no
    n_kv_heads nor rope_theta) and takes max_seq_len as its own argument, so only what differs is written."""
    params = {"dim": cfg.dim, "multiple_of": cfg.multiple_of, "n_heads": cfg.n_heads, "n_layers": cfg.n_layers,
              "norm_eps": cfg.norm_eps, "vocab_size": cfg.vocab_size}
    if cfg.n_kv_heads:
        params["n_kv_heads"] = cfg.n_kv_heads
    if cfg.rope_theta != ModelConfig.rope_theta:
        params["rope_theta"] = cfg.rope_theta
    return params


def find_tokenizer(*candidates: Path) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


# --- ours ---

def read_ours(path: str | os.PathLike, tokenizer: Path | None = None, max_seq_len: int | None = None) -> Weights:
    path = Path(path)
    # mmap: the tensors are paged in as they are used instead of being read whole first.
    saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if "model" in saved and "model_config" in saved:
        cfg = ModelConfig(**saved["model_config"])
        if max_seq_len:
            cfg = replace(cfg, max_seq_len=max_seq_len)
        recorded = saved.get("tokenizer_sha256")
        if tokenizer and recorded and tokenizer_hash(tokenizer).hex() != recorded:
            raise ValueError(f"{tokenizer} is not the tokenizer {path} was trained with")
        return Weights(cfg, saved["model"], tokenizer, recorded)
    if not all(isinstance(v, torch.Tensor) for v in saved.values()):
        raise ValueError(f"{path}: neither a checkpoint (model, model_config) nor a state dict of tensors")
    params_file = path.parent / "params.json"
    if not params_file.is_file():
        raise ValueError(f"{path} is a bare state dict: its config is expected in {params_file} (Meta's fields)")
    cfg = config_from_params(json.loads(params_file.read_text()), saved, max_seq_len)
    return Weights(cfg, saved, tokenizer or find_tokenizer(path.parent / "tokenizer.model"))


def write_ours(weights: Weights, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = {"model_config": asdict(weights.cfg), "model": weights.state_dict}
    if weights.tokenizer_sha256:
        saved["tokenizer_sha256"] = weights.tokenizer_sha256
    tmp = out.with_name(out.name + ".tmp")
    torch.save(saved, tmp)
    os.replace(tmp, out)


# --- meta ---

def merge_model_parallel(shards: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One state dict from Meta's per-rank files (a single file is returned as it is, less rope.freqs)."""
    names = [set(s) - META_DROPPED for s in shards]
    if any(n != names[0] for n in names):
        raise ValueError("the consolidated.*.pth files hold different weight names")
    merged = {}
    for name in sorted(names[0]):
        parts = [s[name] for s in shards]
        module = name.split(".")[-2]
        if len(parts) == 1:
            merged[name] = parts[0]
        elif module in META_SPLIT_DIM:
            merged[name] = torch.cat(parts, dim=META_SPLIT_DIM[module])
        elif module.endswith("norm"):
            if not all(torch.equal(p, parts[0]) for p in parts[1:]):
                raise ValueError(f"{name} differs between model-parallel files; it should be replicated")
            merged[name] = parts[0]
        else:
            raise ValueError(f"{name}: not a weight of Meta's LLaMA")
    return merged


def read_meta(directory: str | os.PathLike, tokenizer: Path | None = None, max_seq_len: int | None = None) -> Weights:
    directory = Path(directory)
    files = sorted(directory.glob("consolidated.*.pth"))
    if not files or not (directory / "params.json").is_file():
        raise ValueError(f"{directory}: Meta's layout is params.json and consolidated.NN.pth")
    shards = [torch.load(f, map_location="cpu", weights_only=True, mmap=True) for f in files]
    state_dict = merge_model_parallel(shards)
    cfg = config_from_params(json.loads((directory / "params.json").read_text()), state_dict, max_seq_len)
    # Meta ships tokenizer.model beside the size folders (llama/7B/, llama/tokenizer.model).
    tokenizer = tokenizer or find_tokenizer(directory / "tokenizer.model", directory.parent / "tokenizer.model")
    return Weights(cfg, state_dict, tokenizer)


def write_meta(weights: Weights, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.save(weights.state_dict, out / "consolidated.00.pth")
    (out / "params.json").write_text(json.dumps(meta_params(weights.cfg)) + "\n")
    if weights.tokenizer:
        shutil.copyfile(weights.tokenizer, out / "tokenizer.model")


# --- Hugging Face ---

def hf_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of wq/wk from Meta's interleaved RoPE pairs (x0, x1), (x2, x3)… to Hugging Face's halves."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def meta_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of hf_permute."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_name(name: str) -> str:
    if name in HF_TOP:
        return HF_TOP[name]
    layer, module = re.fullmatch(r"layers\.(\d+)\.(.+)\.weight", name).groups()
    return f"model.layers.{layer}.{HF_LAYER[module]}.weight"


def our_name(name: str) -> str:
    top = {v: k for k, v in HF_TOP.items()}
    if name in top:
        return top[name]
    found = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", name)
    modules = {v: k for k, v in HF_LAYER.items()}
    if not found or found.group(2) not in modules:
        raise ValueError(f"{name}: not a weight of LlamaForCausalLM that trainer.model has")
    return f"layers.{found.group(1)}.{modules[found.group(2)]}.weight"


def hf_config(cfg: ModelConfig, bos_id: int, eos_id: int, dtype: torch.dtype) -> dict:
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": cfg.dim, "intermediate_size": cfg.ffn_hidden, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads or cfg.n_heads,
        "head_dim": cfg.head_dim, "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps, "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_seq_len, "tie_word_embeddings": False,
        "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0, "initializer_range": 0.02,
        # rope_theta for transformers 4 and readers like vLLM, rope_parameters for transformers 5.
        "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_scaling": None, "pretraining_tp": 1, "use_cache": True,
        "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": None,
        "torch_dtype": dtype_name, "dtype": dtype_name,
    }


def config_from_hf(config: dict, max_seq_len: int | None) -> ModelConfig:
    unsupported = {k: config.get(k) for k in ("attention_bias", "mlp_bias") if config.get(k)}
    if config.get("hidden_act", "silu") != "silu":
        unsupported["hidden_act"] = config["hidden_act"]
    rope = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default" or scaling:
        unsupported["rope scaling"] = scaling or rope
    dim, n_heads = config["hidden_size"], config["num_attention_heads"]
    if config.get("head_dim", dim // n_heads) != dim // n_heads:
        unsupported["head_dim"] = config["head_dim"]
    if unsupported:
        raise ValueError(f"this LlamaForCausalLM has what trainer.model does not: {unsupported}")
    n_kv_heads = config.get("num_key_value_heads") or n_heads
    return ModelConfig(
        dim=dim, n_layers=config["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=None if n_kv_heads == n_heads else n_kv_heads, vocab_size=config["vocab_size"],
        multiple_of=ffn_multiple_of(dim, config["intermediate_size"]), norm_eps=config["rms_norm_eps"],
        rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        max_seq_len=max_seq_len or config.get("max_position_embeddings", 2048))


def read_hf(directory: str | os.PathLike, tokenizer: Path | None = None, max_seq_len: int | None = None) -> Weights:
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    cfg = config_from_hf(config, max_seq_len)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ValueError(f"{directory}: no model.safetensors nor model.safetensors.index.json")
    state_dict = {}
    for file in files:
        for name, tensor in load_file(directory / file).items():
            if name.endswith("rotary_emb.inv_freq"):  # a buffer older transformers saved; recomputed here
                continue
            ours = our_name(name)
            if ours.endswith("attention.wq.weight"):
                tensor = meta_permute(tensor, cfg.n_heads)
            elif ours.endswith("attention.wk.weight"):
                tensor = meta_permute(tensor, cfg.n_kv_heads or cfg.n_heads)
            state_dict[ours] = tensor
    if "output.weight" not in state_dict and config.get("tie_word_embeddings"):
        state_dict["output.weight"] = state_dict["tok_embeddings.weight"].clone()  # ours are untied
    return Weights(cfg, state_dict, tokenizer or find_tokenizer(directory / "tokenizer.model"))


def write_hf(weights: Weights, out: Path, shard_bytes: int = HF_SHARD_BYTES) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cfg = weights.cfg
    tensors = {}
    for name, tensor in weights.state_dict.items():
        if name.endswith("attention.wq.weight"):
            tensor = hf_permute(tensor, cfg.n_heads)
        elif name.endswith("attention.wk.weight"):
            tensor = hf_permute(tensor, cfg.n_kv_heads or cfg.n_heads)
        tensors[hf_name(name)] = tensor.contiguous()
    # Files of at most shard_bytes, in the order of the state dict (one layer's weights stay together).
    shards, size = [{}], 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], out / "model.safetensors", metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, out / file, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, file))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    bos_id, eos_id = 1, 2  # LLaMA's, also this project's (tokenizer.train)
    if weights.tokenizer:
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=str(weights.tokenizer))
        if sp.get_piece_size() != cfg.vocab_size:
            raise ValueError(f"{weights.tokenizer} has {sp.get_piece_size()} pieces, the model {cfg.vocab_size}")
        bos_id, eos_id = sp.bos_id(), sp.eos_id()
        write_hf_tokenizer(sp, weights.tokenizer, out, cfg.max_seq_len)
    dtype = next(iter(tensors.values())).dtype
    (out / "config.json").write_text(json.dumps(hf_config(cfg, bos_id, eos_id, dtype), indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": bos_id, "eos_token_id": eos_id}, indent=2) + "\n")


def write_hf_tokenizer(sp, model_file: Path, out: Path, max_len: int) -> None:
    """Our SentencePiece model as transformers' LlamaTokenizer: the .model file and its settings."""
    shutil.copyfile(model_file, out / "tokenizer.model")
    special = {"unk_token": sp.id_to_piece(sp.unk_id()), "bos_token": sp.id_to_piece(sp.bos_id()),
               "eos_token": sp.id_to_piece(sp.eos_id())}
    config = {"tokenizer_class": "LlamaTokenizer", **special, "pad_token": None,
              "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
              "legacy": False, "model_max_length": max_len, "padding_side": "left", "sp_model_kwargs": {}}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


READERS = {"ours": read_ours, "meta": read_meta, "hf": read_hf}
WRITERS = {"ours": write_ours, "meta": write_meta, "hf": write_hf}


def detect_format(path: str | os.PathLike) -> str:
    path = Path(path)
    if (path / "config.json").is_file():
        return "hf"
    if (path / "params.json").is_file() and any(path.glob("consolidated.*.pth")):
        return "meta"
    if path.is_file():
        return "ours"
    raise ValueError(f"{path}: neither a checkpoint file, a Meta directory nor a Hugging Face directory")


def read(path: str | os.PathLike, fmt: str | None = None, tokenizer: str | os.PathLike | None = None,
         max_seq_len: int | None = None) -> Weights:
    """Weights from any of the three formats (`fmt` None: told by the files)."""
    return READERS[fmt or detect_format(path)](path, Path(tokenizer) if tokenizer else None, max_seq_len)


def convert(src: str | os.PathLike, dst: str | os.PathLike, from_format: str, to_format: str,
            tokenizer: str | os.PathLike | None = None, dtype: torch.dtype | None = None,
            max_seq_len: int | None = None, **write_options) -> Weights:
    weights = read(src, from_format, tokenizer, max_seq_len)
    if dtype is not None:
        weights.state_dict = {k: v.to(dtype) for k, v in weights.state_dict.items()}
    WRITERS[to_format](weights, Path(dst), **write_options)
    return weights


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="from_format", required=True, choices=FORMATS)
    parser.add_argument("--to", dest="to_format", required=True, choices=FORMATS)
    parser.add_argument("input", help="ours: a file; meta, hf: a directory")
    parser.add_argument("output", help="ours: a file; meta, hf: a directory")
    parser.add_argument("--tokenizer", help="the SentencePiece tokenizer.model to ship (default: the one beside "
                                            "the input, where there is one)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="cast the weights (default: as stored)")
    parser.add_argument("--max-seq-len", type=int, help="context length to record (Meta's params.json has none: "
                                                        "2048 for LLaMA 1, 4096 for Llama 2)")
    parser.add_argument("--shard-gb", type=float, default=HF_SHARD_BYTES / 2**30,
                        help="largest safetensors file of --to hf, in GiB")
    args = parser.parse_args(argv)
    options = {"shard_bytes": int(args.shard_gb * 2**30)} if args.to_format == "hf" else {}
    weights = convert(args.input, args.output, args.from_format, args.to_format, args.tokenizer,
                      DTYPES.get(args.dtype), args.max_seq_len, **options)
    n = sum(t.numel() for t in weights.state_dict.values())
    tokenizer = f", tokenizer {weights.tokenizer}" if weights.tokenizer else ", no tokenizer"
    print(f"{args.from_format} {args.input} -> {args.to_format} {args.output}: {n:,} parameters{tokenizer}")


if __name__ == "__main__":
    main()
