"""Pretrain LLaMA on token shards: `python -m trainer.train --config trainer/configs/tiny.json [KEY=VALUE …]`.

Settings (trainer.config.TrainConfig, listed with their meanings by `--print-settings`): `--config FILE` reads
any subset of them (YAML, or the JSON of trainer/configs/), `KEY=VALUE` arguments override them. The data: the
shards of `data_dir`, or LLaMA's mixture (`mixture=config/mixture.yaml`, built by `make mixture`). One process,
or several under `torchrun` (DDP or FSDP2: `parallelism=fsdp`). The training itself is trainer.pretrain.
"""

from __future__ import annotations

import os

from curation import storage
from curation.settings import SettingsError, exit_with_error, load_settings, parse_command
from trainer.config import TrainConfig


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """The settings of this command line (`--print-settings` prints them and exits; a wrong one exits 2)."""
    return parse_command(TrainConfig, argv, prog="python -m trainer.train", description=__doc__)


def check_data(cfg: TrainConfig) -> None:
    """Exits, saying which make target to run, when the data is not there; a wrong mixture file exits 2."""
    if cfg.mixture is None:
        if not storage.is_dir(cfg.data_dir):
            raise SystemExit(f"no shard directory {cfg.data_dir}: run `make shards` first")
        return
    from tokenizer.mixture import MixtureError, MixtureSettings, check_proportions

    try:
        mixture = load_settings(MixtureSettings, cfg.mixture)
        check_proportions(mixture)
    except (SettingsError, MixtureError) as error:
        exit_with_error(f"mixture={cfg.mixture}: {error}")
    if not storage.exists(storage.join(mixture.output, "mixture.json")):
        raise SystemExit(f"no mixture built in {mixture.output}: run `make mixture MIXTURE={cfg.mixture}` first")


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(argv)
    check_data(cfg)
    from trainer.pretrain import train  # torch's import takes seconds: only once the settings are known good

    result = train(cfg)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"checkpoint: {result['checkpoint']}")
        print(f"weights: {result['model']}")
        print(f"loss curve: {result['loss_curve']}")
        print(f"report: {result['report']}")


if __name__ == "__main__":
    main()
