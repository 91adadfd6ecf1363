"""`dinov3_us.eval.defaults`: backbone-dependent defaults, never overriding what the user set."""

from dinov3_us.eval.cli import explicit_keys
from dinov3_us.eval.config import load_eval_config
from dinov3_us.eval.defaults import user_set, with_n_last_blocks_clipped, with_trained_image_size


def test_user_set_keys_come_from_the_yaml_flags_and_overrides(tmp_path):
    yaml = tmp_path / "eval.yaml"
    yaml.write_text("linear:\n  epochs: 3\ndata:\n  image_size: 224\n")
    keys = explicit_keys(str(yaml), {"data.batch_size": 8, "data.num_workers": None}, ["linear.n_last_blocks=[1,4]"])
    assert keys == {"linear.epochs", "data.image_size", "data.batch_size", "linear.n_last_blocks"}


def test_defaults_are_adapted_and_set_values_kept():
    cfg = load_eval_config()
    clipped = with_n_last_blocks_clipped(cfg, depth=2, explicit=set())
    assert clipped.linear.n_last_blocks == [1, 2] and cfg.linear.n_last_blocks == [1, 4]  # cfg is not modified
    assert with_n_last_blocks_clipped(cfg, 2, {"linear.n_last_blocks"}) is cfg
    assert with_n_last_blocks_clipped(cfg, 12, set()) is cfg
    assert with_trained_image_size(cfg, 64, "t.json", set()).data.image_size == 64
    assert with_trained_image_size(cfg, 64, "t.json", {"data.image_size"}) is cfg
    assert with_trained_image_size(cfg, None, "t.json", set()) is cfg
    # no record of what the user set (the launchers' jobs): a value equal to its default counts as unset
    assert not user_set(cfg, "linear.n_last_blocks", None)
    assert user_set(load_eval_config(overrides=["linear.n_last_blocks=[1,2]"]), "linear.n_last_blocks", None)
