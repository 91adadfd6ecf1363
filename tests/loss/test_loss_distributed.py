"""The collectives of the losses, on 2 real processes (gloo, CPU): each rank holds half of a batch and
must get exactly what one process computes on the whole batch."""

import datetime

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dinov3_us.loss import DINOLoss, KoLeoLoss, KoLeoLossDistributed, SinkhornKnoppTeacher

WORLD_SIZE = 2
IBOT_ROWS = (5, 9)  # iBOT ranks may hold different numbers of masked patches


def _worker(rank: int, init_file: str, data: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        close = dict(atol=1e-6, rtol=1e-5)
        # DINO Sinkhorn-Knopp: equal halves; large logits, so a rank-local max shift would differ
        b = data["dino_logits"].shape[0] // WORLD_SIZE
        mine = slice(rank * b, (rank + 1) * b)
        out = DINOLoss(32).sinkhorn_knopp_teacher(data["dino_logits"][mine], 0.05)
        torch.testing.assert_close(out, data["dino_expected"][mine], **close)

        # iBOT Sinkhorn-Knopp: uneven halves, global count from the summed per-rank counts
        start = sum(IBOT_ROWS[:rank])
        rows = slice(start, start + IBOT_ROWS[rank])
        count = torch.tensor([IBOT_ROWS[rank]])
        out = SinkhornKnoppTeacher()(data["ibot_logits"][rows], 0.07, count)
        torch.testing.assert_close(out, data["ibot_expected"][rows], **close)
        assert count.item() == IBOT_ROWS[rank]

        # softmax centering: the center is the mean over the global batch
        loss_fn = DINOLoss(32)
        loss_fn.init_weights()
        loss_fn.update_center(data["dino_logits"][mine])
        loss_fn.apply_center_update()
        torch.testing.assert_close(loss_fn.center, data["center_expected"], **close)

        # distributed KoLeo: neighbours over both ranks, gradients flow back across ranks
        x = data["koleo_x"][mine].clone().requires_grad_(True)
        loss = KoLeoLossDistributed()(x)
        torch.testing.assert_close(loss, data["koleo_expected_per_rank"][rank], **close)
        loss.backward()  # d(sum of the rank losses) / d(this rank's x) = WORLD_SIZE * d(global loss) / dx
        torch.testing.assert_close(x.grad, WORLD_SIZE * data["koleo_expected_grad"][mine], **close)
        # a neighbour group of one rank's batch: the plain KoLeo loss of the local half
        local = KoLeoLossDistributed(loss_group_size=b)(data["koleo_x"][mine])
        torch.testing.assert_close(local, KoLeoLoss()(data["koleo_x"][mine]), **close)
    finally:
        dist.destroy_process_group()


def _koleo_per_sample(x: torch.Tensor) -> torch.Tensor:
    xn = torch.nn.functional.normalize(x, dim=-1)
    dots = (xn @ xn.T).fill_diagonal_(float("-inf"))
    nn_index = dots.argmax(dim=1)
    return -torch.log(torch.nn.functional.pairwise_distance(xn, xn[nn_index], eps=1e-8) + 1e-8)


@pytest.mark.slow
def test_losses_on_two_processes_match_one_process(tmp_path):
    torch.manual_seed(0)
    dino_logits = 6.0 * torch.randn(12, 32)
    ibot_logits = torch.randn(sum(IBOT_ROWS), 32)
    koleo_x = torch.randn(12, 16, requires_grad=True)
    KoLeoLoss()(koleo_x).backward()
    per_sample = _koleo_per_sample(koleo_x.detach())
    data = {
        "dino_logits": dino_logits,
        "dino_expected": DINOLoss(32).sinkhorn_knopp_teacher(dino_logits, 0.05),
        "ibot_logits": ibot_logits,
        "ibot_expected": SinkhornKnoppTeacher()(ibot_logits, 0.07, torch.tensor([sum(IBOT_ROWS)])),
        "center_expected": 0.1 * dino_logits.mean(dim=0, keepdim=True),
        "koleo_x": koleo_x.detach(),
        "koleo_expected_per_rank": per_sample.view(WORLD_SIZE, -1).mean(dim=1),
        "koleo_expected_grad": koleo_x.grad,
    }
    # the halves alone give other answers: the test can tell a missing reduction
    half = DINOLoss(32).sinkhorn_knopp_teacher(dino_logits[:6], 0.05)
    assert not torch.allclose(half, data["dino_expected"][:6], atol=1e-3)
    assert not torch.allclose(KoLeoLoss()(koleo_x[:6]), data["koleo_expected_per_rank"][0], atol=1e-3)

    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), data), nprocs=WORLD_SIZE, join=True)
