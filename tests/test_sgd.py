"""expunge's SGD against torch.optim.SGD: the same weights bit for bit, with and without momentum, and with a
parameter that has no gradient on some steps."""

import pytest

torch = pytest.importorskip("torch")

from expunge.orchestrator.sgd import SGD  # noqa: E402


def run(opt_cls, momentum: float, steps: int = 25):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    extra = torch.nn.Parameter(torch.randn(3))  # used on every other step only
    opt = opt_cls([*model.parameters(), extra], lr=0.07, momentum=momentum)
    g = torch.Generator().manual_seed(1)
    for k in range(steps):
        x, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        out = model(x) + (extra if k % 2 else 0)
        torch.nn.functional.cross_entropy(out, y).backward()
        opt.step()
    return [p.detach().clone() for p in [*model.parameters(), extra]]


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_same_weights_as_torch_sgd(momentum):
    ours, theirs = run(SGD, momentum), run(torch.optim.SGD, momentum)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert not torch.equal(run(SGD, momentum, steps=24)[0], ours[0])  # the steps did move the weights


def test_bad_arguments():
    with pytest.raises(ValueError):
        SGD([], lr=0.1)
    with pytest.raises(ValueError):
        SGD([torch.nn.Parameter(torch.zeros(1))], lr=-1.0)
