"""One rank of the sharded feature pass, run under torchrun by tests/engine/test_fast_paths.py: its own share
of `Pictures` through the backbone, then every rank's, gathered; saved to <out>.<batch>.<rank>."""

from __future__ import annotations

import sys

import torch

from imgcls.data.loaders import make_loader
from imgcls.engine import distributed
from imgcls.engine.features import backbone_features
from imgcls.engine.finetune import own_share
from imgcls.model.networks import build_model


class Pictures(torch.utils.data.Dataset):
    """Seeded uint8 pictures with a class each: a dataset the loaders take as they take a prepared split."""

    def __len__(self) -> int:
        return 13  # odd: the ranks' shares differ in length

    def __getitem__(self, index: int):
        generator = torch.Generator().manual_seed(index)
        return torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=generator), index % 3


def main(out: str) -> None:
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    world, _ = distributed.init("gloo", cpu, 120)
    try:
        torch.manual_seed(0)
        model = build_model("resnet18", 3).eval()
        for batch in (4, 16):  # 16: one batch in all, so rank 1's share is empty
            loader = make_loader(own_share(Pictures(), world, batch), batch, False, 0, 0)
            views, targets = backbone_features(model, "resnet18", loader, cpu, hflip=True)
            gathered = distributed.gather_rows(views, cpu, dim=1), distributed.gather_rows(targets, cpu)
            torch.save(gathered, f"{out}.{batch}.{world.rank}")
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
