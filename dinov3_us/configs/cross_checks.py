"""The rules that relate several keys of a run config, declared once and run by `load_config`.

Each rule is cheap and certain: the combination it rejects would fail later (after the model is built
and `config.yaml` is written) or would silently not do what the keys say. A rule is skipped when one
of its keys already has a type or range problem (`Schema.value_problems`), so every message is about
values that are otherwise valid. `SSLMetaArch` takes a config from `load_config` and relies on them.
"""

from __future__ import annotations

from dinov3_us.configs.schema import Rule


def _at_most_epochs(key: str) -> Rule:
    def check(c):
        if c[key] > c["optim.epochs"]:
            return [f"{key}: expected <= optim.epochs ({c['optim.epochs']}), got {c[key]}"]
        return []

    return Rule((key, "optim.epochs"), check)


def _multiple_of_patch(key: str) -> Rule:
    def check(c):
        size, patch = c[key], c["student.patch_size"]
        if size is not None and size % patch:
            return [f"{key}: expected a multiple of student.patch_size ({patch}), got {size}"]
        return []

    return Rule((key, "student.patch_size"), check)


def _v2_schedule(name: str) -> Rule:
    warmup_key, cosine_key = f"schedules.{name}.warmup_epochs", f"schedules.{name}.cosine_epochs"

    def check(c):
        if not c["schedules.enabled"]:
            return []
        epochs, warmup, cosine = c["optim.epochs"], c[warmup_key], c[cosine_key]
        if warmup + (cosine or 0) > epochs:
            what = f"{warmup_key} ({warmup})" + (f" + {cosine_key} ({cosine})" if cosine else "")
            return [f"schedules.{name}: {what} must be <= optim.epochs ({epochs}) with schedules.enabled=true"]
        return []

    return Rule(("schedules.enabled", "optim.epochs", warmup_key, cosine_key), check)


def _v2_freeze(c):
    key = "schedules.lr.freeze_last_layer_epochs"
    if c["schedules.enabled"] and c[key] > c["optim.epochs"]:
        return [f"{key}: expected <= optim.epochs ({c['optim.epochs']}), got {c[key]}"]
    return []


def _local_subset(c):
    if not c["crops.localcrops_subset_of_globalcrops"]:
        return []
    number, local, glob = c["crops.local_crops_number"], c["crops.local_crops_size"], c["crops.global_crops_size"]
    if number % 2 or local > glob:
        return ["crops.localcrops_subset_of_globalcrops=true needs an even crops.local_crops_number and "
                f"crops.local_crops_size <= crops.global_crops_size, got {number}, {local} and {glob}"]
    return []


def _koleo(c):
    if c["dino.koleo_topk"] > 1 and not c["dino.koleo_loss_distributed"]:
        return [f"dino.koleo_topk: {c['dino.koleo_topk']} > 1 needs dino.koleo_loss_distributed=true"]
    return []


def _separate_head(c):
    if not c["ibot.separate_head"]:
        return ["ibot.separate_head=false is not supported: the iBOT head is always separate, as in DINOv3"]
    return []


def _rope_periods(c):
    base = c["student.pos_embed_rope_base"]
    lo, hi = c["student.pos_embed_rope_min_period"], c["student.pos_embed_rope_max_period"]
    if (lo is None) != (hi is None):
        return ["student.pos_embed_rope_min_period and pos_embed_rope_max_period: set both or neither"]
    if lo is not None and base is not None:
        return ["student.pos_embed_rope_min_period/max_period replace student.pos_embed_rope_base: "
                "set student.pos_embed_rope_base=null to use them"]
    if lo is None and base is None:
        return ["student.pos_embed_rope_base: null needs student.pos_embed_rope_min_period and max_period"]
    if lo is not None and lo > hi:
        return [f"student.pos_embed_rope_min_period ({lo}) must be <= pos_embed_rope_max_period ({hi})"]
    return []


def _pool_weights(c):
    weights = c["data.pool_weights"]
    if weights and sum(weights) <= 0:
        return [f"data.pool_weights: expected at least one weight > 0, got {weights!r}"]
    return []


def _gram(c):
    """The conditions `GramAnchoring` checks when `gram.use_loss` is on."""
    if not c["gram.use_loss"]:
        return []
    problems = []
    if c["gram.ema_teacher"] and c["gram.ckpt"]:
        problems.append("gram.ema_teacher and gram.ckpt are exclusive: set one of them")
    if c["gram.ema_teacher"] and c["gram.rep_update"]:
        problems.append("gram.rep_update has no meaning with gram.ema_teacher=true: set it to false")
    if not c["gram.ema_teacher"] and not c["gram.ckpt"] and c["gram.it_load_ema_teacher"] < 0:
        problems.append("gram.use_loss needs gram.ckpt, gram.ema_teacher=true or gram.it_load_ema_teacher >= 0")
    if not c["gram.ema_teacher"] and c["crops.gram_teacher_crops_size"] is None:
        problems.append("a separate Gram teacher needs crops.gram_teacher_crops_size")
    if c["gram.tokens_used"] != "all" and c["gram.img_level"]:
        problems.append("gram.tokens_used=masked/unmasked needs gram.img_level=false")
    return problems


def _monitor_select(c):
    if c["monitor.select"] not in c["monitor.probes"]:
        return [f"monitor.select: expected one of monitor.probes {c['monitor.probes']!r}, got {c['monitor.select']!r}"]
    return []


def monitor_off(dataset) -> bool:
    """Whether a `monitor.dataset` value switches the downstream monitor off (none, off, false, empty)."""
    return str(dataset or "none").strip().lower() in ("none", "off", "false", "")


def _best_needs_monitor(c):
    """A best checkpoint is the downstream monitor's: refused at load time, not after the training."""
    if c["evaluation.teacher_checkpoint"] == "best" and monitor_off(c["monitor.dataset"]):
        return ["evaluation.teacher_checkpoint: 'best' needs the downstream monitor (monitor.dataset is none); "
                "use auto or latest"]
    return []


RULES: tuple[Rule, ...] = (
    _at_most_epochs("optim.warmup_epochs"),  # the lr warmup must fit in the run
    _at_most_epochs("optim.freeze_last_layer_epochs"),  # else the prototypes are never trained
    _multiple_of_patch("crops.global_crops_size"),  # PatchEmbed refuses other sizes
    _multiple_of_patch("crops.local_crops_size"),
    _multiple_of_patch("crops.gram_teacher_crops_size"),
    *(_v2_schedule(name) for name in ("lr", "weight_decay", "momentum", "teacher_temp")),
    Rule(("schedules.enabled", "optim.epochs", "schedules.lr.freeze_last_layer_epochs"), _v2_freeze),
    Rule(("crops.localcrops_subset_of_globalcrops", "crops.local_crops_number", "crops.local_crops_size",
          "crops.global_crops_size"), _local_subset),
    Rule(("dino.koleo_topk", "dino.koleo_loss_distributed"), _koleo),
    Rule(("ibot.separate_head",), _separate_head),
    Rule(("student.pos_embed_rope_base", "student.pos_embed_rope_min_period",
          "student.pos_embed_rope_max_period"), _rope_periods),
    Rule(("data.pool_weights",), _pool_weights),
    Rule(("gram.use_loss", "gram.ema_teacher", "gram.ckpt", "gram.rep_update", "gram.it_load_ema_teacher",
          "crops.gram_teacher_crops_size", "gram.tokens_used", "gram.img_level"), _gram),
    Rule(("monitor.probes", "monitor.select"), _monitor_select),
    Rule(("evaluation.teacher_checkpoint", "monitor.dataset"), _best_needs_monitor),
)

