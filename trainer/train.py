"""Pretrain LLaMA on token shards: `python -m trainer.train --config trainer/configs/tiny.json [KEY=VALUE …]`.

Settings (trainer.config.TrainConfig, listed with their meanings by `--print-settings`): `--config FILE` reads
any subset of them (YAML, or the JSON of trainer/configs/), `KEY=VALUE` arguments override them. One process,
or several under `torchrun` (DDP or FSDP2: `parallelism=fsdp`). The training itself is trainer.pretrain.
"""

from __future__ import annotations

import os

from curation import storage
from curation.settings import parse_command
from trainer.config import TrainConfig


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """The settings of this command line (`--print-settings` prints them and exits; a wrong one exits 2)."""
    return parse_command(TrainConfig, argv, prog="python -m trainer.train", description=__doc__)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(argv)
    if not storage.is_dir(cfg.data_dir):
        raise SystemExit(f"no shard directory {cfg.data_dir}: run `make shards` first")
    from trainer.pretrain import train  # torch's import takes seconds: only once the settings are known good

    result = train(cfg)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"checkpoint: {result['checkpoint']}")
        print(f"weights: {result['model']}")
        print(f"loss curve: {result['loss_curve']}")


if __name__ == "__main__":
    main()
