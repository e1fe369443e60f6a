"""The trainer under torchrun on CPU (gloo): FSDP2 with and without activation checkpointing against one
process, and a checkpoint written by 2 ranks resumed by 1."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.test_trainer import make_corpus, tiny_run
from trainer.model import Transformer
from trainer.pretrain import checkpoints, load_checkpoint, model_from_checkpoint, train, train_state


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory):
    return make_corpus(shared_data, tmp_path_factory.mktemp("trainer-dist"))


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def torchrun(corpus, out_dir, *settings: str) -> tuple[list[float], str]:
    """Two gloo ranks of 4 windows each (one process of tiny_run takes 8): the losses rank 0 logged, its output."""
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "trainer.train", f"data_dir={corpus[1]}", f"out_dir={out_dir}", "preset=tiny",
                    "seq_len=64", "batch_size=4", "max_steps=4", "eval_interval=0", "eval_batches=2", "lr=0.003",
                    *settings], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    rows = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r], done.stdout


@pytest.fixture(scope="module")
def single(corpus, tmp_path_factory):
    """One process, 8 windows per step, 4 steps: the reference run."""
    out = tmp_path_factory.mktemp("single")
    return train(tiny_run(corpus, out, max_steps=4)), out


def test_fsdp_on_two_ranks_matches_one_process_and_resumes_on_one(corpus, single, tmp_path):
    (reference, _), out = single, tmp_path / "fsdp"
    first, printed = torchrun(corpus, out, "parallelism=fsdp", "stop_at=2")
    assert "2 × cpu, FSDP" in printed
    assert first == pytest.approx(reference["losses"][:2], abs=1e-4)  # same initial weights, same steps
    saved = checkpoints(out)[-1]
    assert train_state(saved)["world_size"] == 2 and train_state(saved)["step"] == 2
    sizes = sorted(p.stat().st_size for p in saved.glob("*.distcp"))
    assert len(sizes) == 2 and sizes[0] > 0.8 * sizes[1]  # each rank wrote its half of weights and AdamW state

    rest = train(tiny_run(corpus, out, max_steps=4))["losses"]  # one process, no torchrun, no FSDP
    assert rest == pytest.approx(reference["losses"][2:], abs=1e-4)
    assert train_state(checkpoints(out)[-1])["data"]["position"] == 4 * 8


def test_fsdp_with_activation_checkpointing_matches_and_exports_plain_weights(corpus, single, tmp_path):
    (reference, reference_dir), out = single, tmp_path / "fsdp-ac"
    losses, printed = torchrun(corpus, out, "parallelism=fsdp", "activation_checkpointing=true")
    assert "2 × cpu, FSDP, activation checkpointing" in printed
    assert losses == pytest.approx(reference["losses"], abs=1e-4)
    exported = load_checkpoint(out / "model.pt")
    assert exported["step"] == 4
    model = model_from_checkpoint(exported)  # strict: no FSDP or checkpoint-wrapper names in the keys
    assert isinstance(model, Transformer)
    expected = load_checkpoint(reference_dir / "model.pt")["model"]
    for name, tensor in exported["model"].items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-4, rtol=1e-3)
