"""trainer.convert on tiny models: Hugging Face export loaded by transformers itself, Meta's model-parallel
files merged, and round trips that give back the same tensors bit for bit."""

import json
from dataclasses import asdict

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaForCausalLM

from tokenizer.shards import tokenizer_hash
from tokenizer.train import trainer_options
from trainer import convert
from trainer.model import ModelConfig, Transformer

VOCAB = 400


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tokenizer_model(shared_data, tmp_path_factory):
    """A SentencePiece model trained with LLaMA's settings (tokenizer.train's) on Botchan."""
    root = tmp_path_factory.mktemp("tok")
    text = (shared_data / "text" / "botchan.en.txt").read_text(encoding="utf-8")
    (root / "sample.txt").write_text("\n".join(line for line in text.splitlines() if line.strip()) + "\n")
    spm.SentencePieceTrainer.train(**trainer_options(str(root / "sample.txt"), str(root / "tokenizer"), VOCAB,
                                                     0.99995, 1))
    return root / "tokenizer.model"


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(**{"dim": 64, "n_layers": 2, "n_heads": 4, "vocab_size": VOCAB, "multiple_of": 32,
                         "max_seq_len": 64, **overrides})
    model = Transformer(cfg)
    with torch.no_grad():  # gains away from 1, so that a misplaced norm weight shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model.eval()


def save_checkpoint(model: Transformer, path, tokenizer=None) -> None:
    saved = {"model": model.state_dict(), "model_config": asdict(model.cfg), "step": 7}
    if tokenizer:
        saved["tokenizer_sha256"] = tokenizer_hash(tokenizer).hex()
    torch.save(saved, path)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_hf_export_loads_in_transformers_with_the_same_logits_and_imports_back(
        tokenizer_model, tmp_path, n_kv_heads):
    model = tiny_model(n_kv_heads=n_kv_heads)
    save_checkpoint(model, tmp_path / "checkpoint.pt", tokenizer_model)
    convert.main(["--from", "ours", "--to", "hf", str(tmp_path / "checkpoint.pt"), str(tmp_path / "hf"),
                  "--tokenizer", str(tokenizer_model)])
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.model",
        "tokenizer_config.json"]

    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.num_key_value_heads == (n_kv_heads or 4) and hf.config.intermediate_size == model.cfg.ffn_hidden
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    tokens = torch.tensor([[1] + sp.encode("I said to him, in 1906, that the school was a good one.")] * 2)
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, model(tokens), atol=1e-4, rtol=0)

    back = convert.read(tmp_path / "hf", "hf")
    assert_same_weights(back.state_dict, model.state_dict())
    assert back.cfg.ffn_hidden == model.cfg.ffn_hidden and back.cfg.n_kv_heads == n_kv_heads
    assert back.tokenizer == tmp_path / "hf" / "tokenizer.model"
    with torch.no_grad():
        torch.testing.assert_close(back.model()(tokens), model(tokens), atol=0, rtol=0)


def test_hf_tokenizer_encodes_and_decodes_as_sentencepiece(tokenizer_model, shared_data, tmp_path):
    save_checkpoint(tiny_model(), tmp_path / "checkpoint.pt", tokenizer_model)
    convert.convert(tmp_path / "checkpoint.pt", tmp_path / "hf", "ours", "hf", tokenizer_model)
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(tok).__name__ == "LlamaTokenizer" and (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    lines = (shared_data / "text" / "botchan.en.txt").read_text(encoding="utf-8").splitlines()[:300]
    texts = [line for line in lines if line.strip() and not line[0].isspace()]
    texts += ["digits 2019 split", "tabs\tand  double spaces\n\nnew lines", "吾輩は猫である 🎉 café"]
    for text in texts:
        ids = tok(text).input_ids
        assert ids == [1] + sp.encode(text), text
        assert tok.decode(ids, skip_special_tokens=True) == text
    # A known difference of transformers' Metaspace pre-tokenizer: SentencePiece adds its dummy-prefix "▁"
    # even before a leading space, transformers does not. Both decode back to the text.
    assert sp.encode(" x", out_type=str) == ["▁", "▁", "x"]
    assert tok.convert_ids_to_tokens(tok(" x").input_ids)[1:] == ["▁", "x"]


def test_sharded_hf_checkpoint_imports(tmp_path):
    model = tiny_model(seed=1)
    save_checkpoint(model, tmp_path / "checkpoint.pt")
    convert.convert(tmp_path / "checkpoint.pt", tmp_path / "hf", "ours", "hf", dtype=torch.bfloat16,
                    shard_bytes=60_000)
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3 and not (tmp_path / "hf" / "model.safetensors").exists()
    assert sum(len(load_file(tmp_path / "hf" / f)) for f in files) == len(model.state_dict())
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    back = convert.read(tmp_path / "hf")
    assert_same_weights(back.state_dict, {k: v.bfloat16() for k, v in model.state_dict().items()})
    # Loaded by transformers too, without a tokenizer beside it.
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    tokens = torch.arange(5, 25)[None]
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, back.model()(tokens), atol=1e-4, rtol=0)


def split_like_meta(state_dict: dict, ranks: int) -> list[dict]:
    """What each of Meta's model-parallel ranks saves: fairscale's ColumnParallelLinear keeps a slice of the
    output rows (wq, wk, wv, w1, w3, output), RowParallelLinear of the input columns (wo, w2),
    ParallelEmbedding of the embedding width; RMSNorm gains and Meta's rope.freqs buffer are whole on every rank."""
    column, row = ("wq", "wk", "wv", "w1", "w3", "output"), ("wo", "w2", "tok_embeddings")
    shards = [{} for _ in range(ranks)]
    for name, tensor in state_dict.items():
        module = name.split(".")[-2]
        dim = 0 if module in column else 1 if module in row else None
        for rank in range(ranks):
            shards[rank][name] = tensor.clone() if dim is None else tensor.chunk(ranks, dim=dim)[rank].clone()
    for shard in shards:
        shard["rope.freqs"] = torch.randn(8)
    return shards


def test_meta_model_parallel_files_merge_into_the_model(tmp_path):
    model = tiny_model(seed=2)
    meta = tmp_path / "llama" / "13B"
    meta.mkdir(parents=True)
    for rank, shard in enumerate(split_like_meta(model.state_dict(), 2)):
        assert shard["layers.0.attention.wo.weight"].shape == (64, 32)
        torch.save(shard, meta / f"consolidated.{rank:02d}.pth")
    (meta / "params.json").write_text(json.dumps({"dim": 64, "multiple_of": 32, "n_heads": 4, "n_layers": 2,
                                                  "norm_eps": 1e-6, "vocab_size": -1}))
    weights = convert.read(meta, "meta", max_seq_len=64)
    assert weights.cfg == model.cfg
    assert_same_weights(weights.state_dict, model.state_dict())
    tokens = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(weights.model()(tokens), model(tokens), atol=0, rtol=0)

    # Replicated weights that differ between ranks are refused, not averaged or picked.
    shard = torch.load(meta / "consolidated.01.pth")
    shard["norm.weight"] = shard["norm.weight"] + 1
    torch.save(shard, meta / "consolidated.01.pth")
    with pytest.raises(ValueError, match="norm.weight differs"):
        convert.read(meta, "meta")


def test_meta_export_and_bare_state_dict_import(tokenizer_model, tmp_path):
    model = tiny_model(seed=3, rope_theta=500000.0)
    save_checkpoint(model, tmp_path / "checkpoint.pt", tokenizer_model)
    convert.convert(tmp_path / "checkpoint.pt", tmp_path / "meta", "ours", "meta", tokenizer_model)
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    assert params == {"dim": 64, "multiple_of": 32, "n_heads": 4, "n_layers": 2, "norm_eps": 1e-6,
                      "vocab_size": VOCAB, "rope_theta": 500000.0}
    back = convert.read(tmp_path / "meta", max_seq_len=64)  # the format told by the files
    assert back.cfg == model.cfg and back.tokenizer == tmp_path / "meta" / "tokenizer.model"
    assert_same_weights(back.state_dict, model.state_dict())

    # A plain Transformer.state_dict() (a consolidated weights-only export) with params.json beside it.
    torch.save(model.state_dict(), tmp_path / "meta" / "weights.pt")
    bare = convert.read(tmp_path / "meta" / "weights.pt", "ours", max_seq_len=64)
    assert bare.cfg == model.cfg
    assert_same_weights(bare.state_dict, model.state_dict())

    convert.convert(tmp_path / "meta", tmp_path / "ours.pt", "meta", "ours", max_seq_len=64)
    ours = convert.read(tmp_path / "ours.pt")
    assert ours.cfg == model.cfg and ours.tokenizer_sha256 == tokenizer_hash(tokenizer_model).hex()
    assert_same_weights(ours.state_dict, model.state_dict())


def test_wrong_inputs_are_refused_with_a_reason(tokenizer_model, tmp_path):
    model = tiny_model()
    save_checkpoint(model, tmp_path / "checkpoint.pt", tokenizer_model)
    other = tmp_path / "other.model"
    other.write_bytes(tokenizer_model.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="not the tokenizer"):
        convert.read(tmp_path / "checkpoint.pt", tokenizer=other)
    state = model.state_dict()
    del state["layers.1.ffn_norm.weight"]
    with pytest.raises(ValueError, match="missing.*layers.1.ffn_norm.weight"):
        convert.Weights(model.cfg, state)
    convert.convert(tmp_path / "checkpoint.pt", tmp_path / "hf", "ours", "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "rope_scaling": {"rope_type": "yarn"}}))
    with pytest.raises(ValueError, match="rope scaling"):
        convert.read(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "intermediate_size": 100}))
    with pytest.raises(ValueError, match="multiple_of"):
        convert.read(tmp_path / "hf")
