"""`soft_cross_entropy`: the official soft-target formula's value and gradient, with a lean backward."""

import pytest
import torch
import torch.nn.functional as F

from dinov3_us.loss.cross_entropy import soft_cross_entropy


def _reference(t, s, temp):
    return torch.sum(t.float() * F.log_softmax(s.float() / temp, dim=-1), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(7, 50), (2, 3, 40)])
def test_value_and_gradient_match_the_official_formula(dtype, shape):
    torch.manual_seed(0)
    logits = (3 * torch.randn(shape)).to(dtype)
    targets = torch.softmax(torch.randn(shape) / 0.3, dim=-1) * 1.01  # rows not exactly summing to 1
    upstream = torch.randn(shape[:-1])
    grads = []
    for fn in (soft_cross_entropy, _reference):
        s = logits.clone().requires_grad_(True)
        out = fn(targets, s, 0.1)
        (out * upstream).sum().backward()
        grads.append((out.detach(), s.grad))
    (out, grad), (ref_out, ref_grad) = grads
    assert out.dtype == torch.float32 and out.shape == shape[:-1] and grad.dtype == dtype
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=1e-5 if dtype == torch.float32 else 1e-2,
                               atol=1e-5 if dtype == torch.float32 else 1e-3)


def test_targets_get_no_gradient_and_shapes_are_checked():
    t = torch.softmax(torch.randn(3, 5), -1).requires_grad_(True)
    s = torch.randn(3, 5, requires_grad=True)
    soft_cross_entropy(t, s, 0.1).sum().backward()
    assert t.grad is None and s.grad is not None
    with pytest.raises(ValueError, match="broadcastable"):
        soft_cross_entropy(t[:2], s, 0.1)


def test_targets_broadcast_as_in_the_official_product():
    t = torch.softmax(torch.randn(1, 4, 6), -1)  # e.g. softmax-centred iBOT targets [1, M, K]
    s = torch.randn(4, 6)
    torch.testing.assert_close(soft_cross_entropy(t, s, 0.2), _reference(t, s, 0.2))


def test_row_chunks_give_the_same_value_and_gradient(monkeypatch):
    """Rows are processed a few at a time (small temporaries): any chunk size gives the same result."""
    from dinov3_us.loss import cross_entropy

    torch.manual_seed(1)
    logits = torch.randn(37, 64) * 4
    targets = torch.softmax(torch.randn(37, 64) / 0.2, dim=-1)
    results = []
    for chunk_bytes in (8 * 2**20, 4 * 64 * 5):  # one chunk; chunks of 5 rows (the last one of 2)
        monkeypatch.setitem(cross_entropy.CHUNK_BYTES, "cpu", chunk_bytes)
        s = logits.clone().requires_grad_(True)
        out = soft_cross_entropy(targets, s, 0.1)
        out.sum().backward()
        results.append((out.detach(), s.grad))
    assert len(cross_entropy._row_chunks(37, 64, torch.device("cpu"))) == 8
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)
    torch.testing.assert_close(results[1][0], _reference(targets, logits, 0.1), rtol=1e-5, atol=1e-5)
