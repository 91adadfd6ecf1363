"""Collapse statistics: each one separates the state it names from a healthy one."""

import math

import torch

from dinov3_us.train.monitor import CollapseWatch, collapse_metrics


def outputs(logits, targets, cls):
    return {"cls_after_head": logits, "cls_centered": targets, "cls_pre_head": cls}


def test_each_statistic_names_its_collapse():
    torch.manual_seed(0)
    n, B, K, D = 2, 16, 64, 32
    peaked = torch.eye(K)[torch.randint(0, K, (n, B))] * 20  # [n, B, K]: each image on its own prototype
    uniform_targets = torch.full((n, B, K), 1.0 / K)
    healthy = collapse_metrics(outputs(peaked, torch.softmax(peaked, -1), torch.randn(n, B, D)),
                               {"cls_pre_head": torch.randn(n, B, D)}, teacher_temp=1.0)
    assert healthy["teacher_entropy"] < 0.2 and healthy["teacher_batch_entropy"] > 0.6
    assert healthy["target_entropy"] < 0.2 and healthy["teacher_cls_std"] > 0.8
    assert CollapseWatch().check({k: float(v) for k, v in healthy.items()}) == []

    same = torch.randn(D).expand(n, B, D)  # every image maps to one vector
    flat = collapse_metrics(outputs(torch.zeros(n, B, K), uniform_targets, same), {"cls_pre_head": same},
                            teacher_temp=1.0)
    assert math.isclose(flat["teacher_entropy"], 1.0, rel_tol=1e-5)
    assert math.isclose(flat["target_entropy"], 1.0, rel_tol=1e-5)
    assert flat["teacher_cls_std"] < 1e-5 and flat["student_cls_std"] < 1e-5

    one = torch.zeros(n, B, K)
    one[..., 3] = 30.0  # every image on prototype 3
    dominant = collapse_metrics(outputs(one, torch.softmax(one, -1), torch.randn(n, B, D)),
                                {"cls_pre_head": torch.randn(n, B, D)}, teacher_temp=1.0)
    assert dominant["teacher_batch_entropy"] < 0.05
