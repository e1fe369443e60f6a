"""trainer.sample on tiny random models: beam search against exhaustive search and greedy, batched prompts
against one at a time, and the command line on a Hugging Face export."""

import itertools
from dataclasses import asdict

import pytest
import sentencepiece as spm
import torch

from tokenizer.train import trainer_options
from trainer import convert
from trainer.model import ModelConfig, Transformer
from trainer.sample import attention_mask, beam_search, default_device_and_dtype, generate, generate_batch, main

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def peaked_model(vocab: int, seed: int, **overrides) -> Transformer:
    """A random model with weights large enough that its next-token distributions are far from uniform
    (the default 0.02 init gives near ties everywhere, where any decoder looks right)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(**{"dim": 32, "n_layers": 2, "n_heads": 4, "vocab_size": vocab, "multiple_of": 16,
                         "max_seq_len": 48, **overrides})
    model = Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.normal_(0, 0.3)
    return model.eval()


@torch.no_grad()
def log_probability(model: Transformer, prompt: list[int], continuations: list[list[int]]) -> torch.Tensor:
    """Sum of log p(token | prefix) over each continuation, recomputed without a cache."""
    seqs = torch.tensor([prompt + c for c in continuations])
    logprobs = model(seqs[:, :-1]).log_softmax(-1)
    picked = logprobs.gather(-1, seqs[:, 1:, None])[..., 0]
    return picked[:, len(prompt) - 1:].sum(-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_equals_exhaustive_search_on_a_tiny_vocabulary(seed):
    vocab, steps = 6, 3
    model = peaked_model(vocab, seed)
    prompt = [1, 4, 2]
    everything = [list(c) for c in itertools.product(range(vocab), repeat=steps)]
    scores = log_probability(model, prompt, everything)
    # vocab ** (steps - 1) beams keep every prefix, so the last step sees all vocab ** steps sequences.
    ids, logprob = beam_search(model, prompt, steps, beams=vocab ** (steps - 1))
    assert ids[len(prompt):] == everything[int(scores.argmax())]
    assert logprob == pytest.approx(float(scores.max()), abs=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_beam_search_scores_at_least_greedy(seed):
    model = peaked_model(64, seed)
    prompt = [1, 7, 9, 3]
    greedy = generate(model, prompt, 10)[len(prompt):]
    beam, logprob = beam_search(model, prompt, 10, beams=4, length_penalty=0.0)
    scores = log_probability(model, prompt, [greedy, beam[len(prompt):]])
    assert logprob == pytest.approx(float(scores[1]), abs=1e-4)  # the cache-reordered score is the true one
    assert scores[1] >= scores[0] - 1e-5
    assert beam_search(model, prompt, 10, beams=1, length_penalty=0.0)[0][len(prompt):] == greedy


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_with_eos_equals_exhaustive_search(length_penalty):
    vocab, steps = 6, 3
    model = peaked_model(vocab, 5)
    prompt = [1, 2]
    eos = generate(model, prompt, 1)[-1]  # the likeliest first token ends the sequence: a strong short candidate
    # Every finished sequence: it ends at eos, or runs the full length without one.
    candidates = [list(c) for n in range(1, steps + 1) for c in itertools.product(range(vocab), repeat=n)
                  if eos not in c[:-1] and (c[-1] == eos or n == steps)]
    scores = [float(log_probability(model, prompt, [c])[0]) for c in candidates]
    ranks = [score / len(c) ** length_penalty for score, c in zip(scores, candidates)]
    best = max(range(len(candidates)), key=ranks.__getitem__)
    # vocab ** steps beams: no candidate is ever dropped, so beam search is exhaustive here.
    ids, logprob = beam_search(model, prompt, steps, beams=vocab ** steps, length_penalty=length_penalty, eos_id=eos)
    assert ids[len(prompt):] == candidates[best]
    assert logprob == pytest.approx(scores[best], abs=1e-5)


def test_batched_prompts_give_the_same_greedy_continuations_as_one_at_a_time():
    model = peaked_model(50, 7)
    prompts = [[1, 5], [1, 8, 3, 9, 4, 4, 7, 2, 11], [1], [1, 30, 31, 32, 33]]
    alone = [generate(model, p, 12) for p in prompts]
    assert generate_batch(model, prompts, 12) == alone
    assert generate_batch(model, prompts, 12, use_cache=False) == alone
    # The logits themselves agree: the padding is masked out and RoPE sees relative positions only.
    width = max(map(len, prompts))
    padded = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    valid = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts])
    with torch.no_grad():
        batched = model(padded, mask=attention_mask(valid, width, 0))[:, -1]
        for row, p in enumerate(prompts):
            torch.testing.assert_close(batched[row], model(torch.tensor([p]))[0, -1], atol=1e-5, rtol=0)


def test_batched_sampling_stops_each_row_at_eos_and_is_seeded():
    model = peaked_model(20, 9)
    prompts = [[1, 3], [1, 4, 5, 6]]
    runs = [generate_batch(model, prompts, 15, temperature=1.0, top_k=5, eos_id=2,
                           generator=torch.Generator().manual_seed(11)) for _ in range(2)]
    assert runs[0] == runs[1]
    for out, prompt in zip(runs[0], prompts):
        new = out[len(prompt):]
        assert out[:len(prompt)] == prompt and 1 <= len(new) <= 15
        assert 2 not in new[:-1] and (new[-1] == 2 or len(new) == 15)
    with pytest.raises(ValueError, match="longer than the model's context"):
        generate_batch(model, [list(range(49))], 1)


def test_cli_samples_a_batch_and_beams_from_a_hugging_face_export(shared_data, tmp_path, capsys):
    text = (shared_data / "text" / "botchan.en.txt").read_text(encoding="utf-8")
    (tmp_path / "sample.txt").write_text("\n".join(line for line in text.splitlines() if line.strip()) + "\n")
    spm.SentencePieceTrainer.train(**trainer_options(str(tmp_path / "sample.txt"), str(tmp_path / "tok"), 400,
                                                     0.99995, 1))
    model = peaked_model(400, 3, max_seq_len=64)
    torch.save({"model": model.state_dict(), "model_config": asdict(model.cfg)}, tmp_path / "weights.pt")
    convert.convert(tmp_path / "weights.pt", tmp_path / "hf", "ours", "hf", tmp_path / "tok.model")
    assert default_device_and_dtype() == (torch.device("cpu"), torch.float32)  # no GPU on this machine

    main(["--checkpoint", str(tmp_path / "hf"), "--prompt", "I said", "--prompt", "The school was",
          "--max-new-tokens", "8", "--temperature", "0"])
    greedy = capsys.readouterr().out.split("---\n")
    assert len(greedy) == 3 and greedy[0].startswith("I said") and greedy[1].startswith("The school was")
    main(["--checkpoint", str(tmp_path / "hf"), "--prompt", "I said", "--prompt", "The school was",
          "--max-new-tokens", "8", "--beams", "3"])
    beams = capsys.readouterr().out.split("---\n")
    assert len(beams) == 3 and beams[0].startswith("I said") and beams[1].startswith("The school was")
    main(["--checkpoint", str(tmp_path / "hf"), "--prompt", "I said", "--max-new-tokens", "8",
          "--num-samples", "3", "--top-p", "0.9", "--dtype", "bfloat16"])  # the GPU's dtype, here on the CPU
    assert capsys.readouterr().out.count("---\n") == 3
