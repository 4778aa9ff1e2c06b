"""The checkpoint writer: what it writes is the state at the moment of the save, byte for byte what a
blocking save writes, while the loop goes on changing the weights; a failed write is raised, not lost."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from imgcls.engine.state import StateWriter, TrainState, capture_rng, load_state, save_state


def trained_state() -> tuple[nn.Module, torch.optim.Optimizer, TrainState]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 64)).sum().backward()
        optimizer.step()
    state = TrainState(
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        scheduler={},
        stopper={"best": {k: v.clone() for k, v in model.state_dict().items()}},
        history=[{"epoch": 1, "train_loss": 0.5}],
        epoch=2,
        step=1,
        rng=capture_rng(),
        meta={"run_id": "r"},
    )
    return model, optimizer, state


def test_a_background_save_writes_the_state_as_it_was_when_saved_byte_for_byte(tmp_path):
    model, optimizer, state = trained_state()
    save_state(tmp_path / "blocking.pt", state)
    StateWriter(tmp_path / "not_behind.pt", behind=False).save(state)  # the train stage's choice on a CPU
    assert (tmp_path / "not_behind.pt").read_bytes() == (tmp_path / "blocking.pt").read_bytes()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    writer = StateWriter(tmp_path / "behind.pt")
    writer.save(state)
    with torch.no_grad():  # the loop goes on at once: the next step changes the live tensors in place
        for parameter in model.parameters():
            parameter.add_(1.0)
        for moments in optimizer.state.values():
            moments["exp_avg"].add_(1.0)
    writer.close()
    assert (tmp_path / "behind.pt").read_bytes() == (tmp_path / "blocking.pt").read_bytes()
    saved = load_state(tmp_path / "behind.pt")
    for key, value in expected.items():
        assert torch.equal(saved.model[key], value)
    assert len(writer.stalls) == 1 and writer.stalls[0] >= 0


def test_a_failed_write_is_raised_by_the_next_save_or_close(tmp_path):
    _, _, state = trained_state()
    (tmp_path / "a_file").write_text("not a folder")
    writer = StateWriter(tmp_path / "a_file" / "checkpoint.pt")
    writer.save(state)
    with pytest.raises(OSError, match=r"cannot write .*a_file/checkpoint\.pt"):
        writer.close()
    writer.close()  # raised once, then clean
