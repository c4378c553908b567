"""squash: invariants, the analytic backward, and the custom op."""

import pytest
import torch

import capsid_kernels as ck
from capsid_kernels.reference import squash, squash_backward


def test_hand_values():
    # ||z|| = 5: factor 5 / 25.5
    z = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    out = squash(z)
    torch.testing.assert_close(out[0], torch.tensor([3.0, 4.0], dtype=torch.float64) * (5 / 25.5))
    assert torch.equal(out[1], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(out[2], torch.tensor([0.6, 0.8], dtype=torch.float64) / 1.5)


def test_norm_below_one_and_maximal_at_unit_norm_over_sqrt2():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1000, 7, generator=g, dtype=torch.float64) * torch.logspace(-4, 4, 1000, dtype=torch.float64)[:, None]
    n = squash(z).norm(dim=1)
    assert (n < 1).all() and (n >= 0).all()
    # the output norm ||z||^2 / (0.5 + ||z||^2) grows monotonically with ||z|| towards 1
    assert torch.all(torch.diff(squash(z).norm(dim=1)[torch.argsort(z.norm(dim=1))]) >= -1e-15)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_dtype_preserved(dtype):
    z = torch.randn(5, 3).to(dtype)
    assert squash(z).dtype == dtype


def test_analytic_backward_matches_autograd():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(64, 9, generator=g, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(64, 9, generator=g, dtype=torch.float64)
    (auto,) = torch.autograd.grad(squash(z), z, grad)
    torch.testing.assert_close(squash_backward(grad, z.detach()), auto, rtol=1e-12, atol=1e-12)


def test_backward_at_zero_is_zero_free_of_nan():
    z = torch.zeros(2, 4, dtype=torch.float64)
    g = torch.randn(2, 4, dtype=torch.float64)
    out = squash_backward(g, z)
    assert torch.isfinite(out).all()
    assert torch.equal(out, torch.zeros_like(out))  # f(0) = 0 and the direction term vanishes


def test_gradcheck_op():
    z = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ck.squash(t, backend="eager"), (z,))
    assert torch.autograd.gradgradcheck(lambda t: squash(t), (z,))


def test_opcheck_eager():
    from capsid_kernels.ops.squash import squash_eager

    z = torch.randn(4, 3, 6, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(squash_eager, (z,))


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match=r"z: expected dtype float64, float32 or bfloat16, got torch.int64"):
        ck.squash(torch.ones(3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"z: expected a torch.Tensor"):
        ck.squash([1.0, 2.0])
    with pytest.raises(ValueError, match="z: expected at least one dimension"):
        ck.squash(torch.tensor(1.0))
