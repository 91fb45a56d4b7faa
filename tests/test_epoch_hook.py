"""``wrap(..., on_epoch_end=fn)``: each finished epoch's telemetry record, handed to any logger."""

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import autoassist


def _data(n=400):
    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(4))
    return TensorDataset(x, (x[:, 0] > 0).long())


def test_hook_gets_each_epochs_record_once():
    got = []
    base = DataLoader(_data(), batch_size=25, shuffle=True)
    with autoassist.wrap(base, sync=True, floor=0.3, on_epoch_end=got.append) as loader:
        for epoch in range(3):
            loader.set_epoch(epoch)
            for x, y in loader:
                loader.report(x[:, 1] ** 2 + y.float())
            assert len(got) == epoch + 1 and got[-1]["epoch"] == epoch  # at the epoch's end
        assert got == loader.telemetry  # the records the loader keeps, field for field
        assert got[2]["kept"] < 400 and got[2]["reported_instances"] == got[2]["kept"]
        got[0]["kept"] = -1  # a copy: what the hook does stays out of the loader's records
        assert loader.telemetry[0]["kept"] == 400
        with loader.late_reports():  # a deferred end reaches the hook when it is recorded
            loader.set_epoch(3)
            held = []
            for x, y in loader:
                held.append((loader.batch_ids, x, y))
            assert len(got) == 3  # the epoch's end waits for its late losses
            for ids, x, y in held:
                loader.report(x[:, 1] ** 2 + y.float(), ids=ids)
        assert len(got) == 4 and got[3]["epoch"] == 3 and got[3]["unreported_instances"] == 0


class _Stream(IterableDataset):
    def __init__(self, x):
        self.x = x

    def __iter__(self):
        for i in range(len(self.x)):
            yield {"id": i, "x": self.x[i]}


def test_keyed_loader_hook_and_a_bad_hook():
    x = torch.randn(100, 3)
    got = []
    base = DataLoader(_Stream(x), batch_size=10)
    with autoassist.wrap(base, key=lambda item: item["id"], num_instances=100, features=x,
                         sync=True, on_epoch_end=got.append) as loader:
        loader.set_epoch(0)
        for batch in loader:
            loader.report(batch["x"][:, 0] ** 2)
    assert [r["epoch"] for r in got] == [0] and got[0]["reported_instances"] == 100
    with pytest.raises(TypeError, match="on_epoch_end must be a function .* got str"):
        autoassist.wrap(DataLoader(_data(), batch_size=25), on_epoch_end="print")
