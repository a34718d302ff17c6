"""Equality bit for bit, for checkpoints and anything nested like them."""

import torch


def assert_identical(a, b, where: str = "checkpoint") -> None:
    """Tensors equal bit for bit, everything else equal, through nested dicts, lists and tuples."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{k}]")
    else:
        assert a == b, where


def assert_same_checkpoint(a: dict, b: dict) -> None:
    """Two checkpoints of the same run, equal bit for bit but for ``seconds``, the wall-clock training time."""
    a, b = dict(a), dict(b)
    assert a.pop("seconds") > 0 and b.pop("seconds") > 0
    assert_identical(a, b)
