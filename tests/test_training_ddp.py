"""DistributedDataParallel on CPU (gloo): two processes end with identical weights."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, out: str, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
    )  # fmt: skip
    from napari_ritm_training.trainer import TrainConfig, Trainer

    cfg = TrainConfig(
        data=[], synthetic_fraction=1.0, synthetic_images=4, out=out, epochs=1,
        iters_per_epoch=2, batch_size=4, crop=(64, 64), val_every=0, threads=1, device="cpu",
    )  # fmt: skip
    trainer = Trainer(cfg)
    trainer.run()
    state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    torch.save(state, os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_gloo_processes_keep_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    mp.spawn(_worker, args=(str(out), _free_port()), nprocs=2, join=True)
    a = torch.load(out / "rank0.pt", weights_only=True)
    b = torch.load(out / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # Training did happen, and only rank 0 wrote the run files.
    from napari_ritm.model import load_checkpoint

    model = load_checkpoint(out / "last.pth")
    assert model.metadata["world_size"] == 2 and model.metadata["iteration"] == 2
    init = torch.load(out / "resume.pth", weights_only=True)
    assert init["epoch"] == 1 and init["iteration"] == 0
    assert not list(out.glob("*.tmp*"))  # no temporary file of an atomic write
