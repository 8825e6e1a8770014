"""Every value that config/*.yaml and the loss catalog take from a published source, pinned to it.

One table: each row gives values and the repository, file and full commit they were read from. The
tests resolve every (pair, method) of the main experiments exactly as a run would (the config file
merged over config.yaml, the method's entry, the pair's overrides, the catalog's defaults) and demand
that the result is the rows' values, no more and no less; so an edit of a config value, a default or
a row cannot drift silently. docs/method.md explains each reading (log names, yaml defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from helpers import ROOT, workflow_config

from rckd.data import datasets
from rckd.losses import catalog, registry


# Repository -> the commit every row from it was read at.
COMMITS = {
    "megvii-research/mdistiller": "a08d46f10d6102bd6e3f258ca5ac880b020ea259",
    "sunshangquan/logit-standardization-KD": "f6e5aa5172bad618e801163c3385322eea673754",
    "zkxufo/TTM": "fe457b33a71ba27536ec04fe3d32c5b04963522f",
    "saberdante/RCKD": "e6b146e72bffcbf4ad66742e32a32dfeee1b119e",
    "hunto/DIST_KD": "2418f18b1fedd7c2646a7b1b9a27d5c674c2170b",
    "hunto/image_classification_sota": "6f7a70a1dd57fd88413d83909d3d53243068f701",
    "HobbitLong/RepDistiller": "b84f547c5db6a35318d4671d7d5c4de74c822403",
    "yzd-v/cls_KD": "1e5d48f36957ee460d39d7ebc592c6cc7f8f3d66",  # branch 1.0
    "zhengli97/CTKD": "7d5252241259ae70d38a832371fed9697d15fc14",
    "Jin-Ying/Multi-Level-Logit-Distillation": "5ee473fcf193dfb00a0598b64d0acfe6ad58a482",
}
MD, LS, TTM, RCKD = ("megvii-research/mdistiller", "sunshangquan/logit-standardization-KD", "zkxufo/TTM",
                     "saberdante/RCKD")
SOTA = "hunto/image_classification_sota"
NKD, CTKD, MLKD = "yzd-v/cls_KD", "zhengli97/CTKD", "Jin-Ying/Multi-Level-Logit-Distillation"


@dataclass(frozen=True)
class Row:
    values: dict[str, Any]
    repo: str
    path: str
    note: str = ""


# --- the loss catalog's defaults (CIFAR-100) -----------------------------------------------------
CATALOG = {
    "kd": [Row({"ce": 0.1, "kd": 0.9, "T": 4.0}, MD, "mdistiller/engine/cfg.py", "CFG.KD"),
           Row({"ls": False}, LS, "tools/train.py", "LS only with --logit-stand")],
    "dkd": [Row({"ce": 1.0, "alpha": 1.0, "beta": 8.0, "T": 4.0, "warmup": 20.0}, MD, "mdistiller/engine/cfg.py",
                "CFG.DKD"),
            Row({"ls": False}, LS, "tools/train.py", "LS only with --logit-stand")],
    "dist": [Row({"ce": 1.0, "kd": 2.0, "T": 4.0}, SOTA, "configs/strategies/distill/dist_cifar.yaml",
                 "ori_loss_weight 1, kd_loss_weight 2, kd: dist_t4"),
             Row({"beta": 1.0, "gamma": 1.0}, SOTA, "lib/models/losses/kd_loss.py", "DIST(beta=1, gamma=1, tau)")],
    "wttm": [Row({"ce": 1.0, "beta": 4.0, "power": 0.2}, TTM, "README.md",
                 "its one WTTM example: --add wttm --ttm_l 0.2 -a 4, -r default 1")],
    "nkd": [Row({"ce": 1.0, "T": 3.0, "gamma": 3.5}, NKD, "configs/distillers/cifar100/res34_distill_res18_cifar.py",
                "NKDLoss temp 3.0, gamma 3.5; the student's CE weight 1")],
    "ctkd": [Row({"ce": 0.1, "kd": 0.9, "curriculum": 10.0}, CTKD, "scripts/run_cifar_distill.sh",
                 "-r 0.1 -a 0.9, --cosine_decay 1 --decay_max 0 --decay_min -1 --decay_loops 10"),
             Row({"ls": False}, CTKD, "train_student.py", "no logit standardization")],
    "mlkd": [Row({"ce": 0.1, "kd": 0.9, "T": 4.0}, MLKD, "mdistiller/engine/cfg.py",
                 "CFG.KD: its configs/cifar100/ours/*.yaml set no KD block")],
    "rckd": [Row({"ce": 1.0, "rc": 5.0, "T": 4.0}, RCKD, "configs/cifar100/RCKD/res32x4_res8x4.yaml",
                 "RCKD.LOSS.CE_WEIGHT 1.0, KD_WEIGHT 5.0, TEMPERATURE 4"),
             Row({"kd": 0.0, "relation": "log_ratio", "kappa": 1.0, "warmup": 0.0}, RCKD,
                 "mdistiller/distillers/RCKD.py", "log-ratio cosine only: no KL, no rank relation, no warm-up")],
}

# --- config/config.yaml: methods (over the catalog) and per-pair values ---------------------------
_LS_KD = Row({"ls": True, "ce": 0.1}, LS, "mdistiller/engine/cfg.py", "--logit-stand keeps KD.LOSS.CE_WEIGHT")
_LS_FLAGS = Row({"T": 2.0, "kd": 9.0}, LS, "README.md", "--logit-stand --base-temp 2 --kd-weight 9 (no log)")
_LS_DKD = Row({"ls": True}, LS, "tools/train.py", "--logit-stand")


def _ls_kd_log(pair: str, T: float, weight: float) -> list[Row]:
    """KD+LS from a log name `kd,TEACHER,STUDENT,T,KD_WEIGHT`."""
    return [_LS_KD, Row({"T": T, "kd": weight}, LS, f"logs/KD/kd,{pair},{T:g},{weight:g}.txt")]


def _ls_dkd_log(pair: str, T: float, weight: float, beta: float | None = None, yaml_file: str = "") -> list[Row]:
    """DKD+LS from a log name `dkd,TEACHER,STUDENT,T,KD_WEIGHT[,BETA]`: alpha = weight, beta = BETA * weight
    (tools/train.py); without BETA in the name, the DKD yaml's (none: cfg.py's 8)."""
    name = f"logs/DKD/dkd,{pair},{T:g},{weight:g}" + (f",{beta:.1f}" if beta is not None else "") + ".txt"
    rows = [_LS_DKD, Row({"T": T, "alpha": weight}, LS, name)]
    if beta is None:
        return rows + [Row({"beta": 8.0 * weight}, LS, f"configs/cifar100/dkd/{yaml_file}.yaml",
                           "no BETA: cfg.py's DKD.BETA 8.0, times the KD weight")]
    return rows + [Row({"beta": beta * weight}, LS, name, "BETA times the KD weight")]


def _ls_dkd_default(yaml_file: str) -> list[Row]:
    """DKD+LS for a pair the repository has no log of: its DKD yaml with the README's flags."""
    return [_LS_DKD, Row({"T": 2.0, "alpha": 9.0}, LS, "README.md", "--base-temp 2 --kd-weight 9 (no log)"),
            Row({"beta": 72.0}, LS, f"configs/cifar100/dkd/{yaml_file}.yaml", "no BETA: 8.0 times the KD weight 9")]


def _dkd_beta(yaml_file: str, beta: float) -> list[Row]:
    note = "DKD.BETA" if beta != 8.0 else "no DKD block: cfg.py's DKD.BETA 8.0"
    return [Row({"beta": beta}, MD, f"configs/cifar100/dkd/{yaml_file}.yaml", note)]


def _cifar(md_yaml: str, beta: float, kd_ls: list[Row], dkd_ls: list[Row]) -> dict[str, list[Row]]:
    """The rows of one CIFAR-100 pair beyond the catalog: DKD's beta, KD+LS, DKD+LS (DIST, RCKD: defaults)."""
    return {"dkd": _dkd_beta(md_yaml, beta), "kd_ls": kd_ls, "dkd_ls": dkd_ls}


CIFAR_PAIRS = {
    ("resnet56", "resnet20"): _cifar("res56_res20", 2.0, _ls_kd_log("resnet56,resnet20", 2, 9),
                                     _ls_dkd_log("resnet56,resnet20", 3, 18, 2.0)),
    ("resnet110", "resnet32"): _cifar("res110_res32", 2.0, _ls_kd_log("resnet110,resnet32", 2, 9),
                                      _ls_dkd_log("resnet110,resnet32", 2, 15, 2.0)),
    ("resnet32x4", "resnet8x4"): _cifar("res32x4_res8x4", 8.0, _ls_kd_log("resnet32x4,resnet8x4", 2, 9),
                                        _ls_dkd_log("resnet32x4,resnet8x4", 2, 9, None, "resnet32x4_resnet8x4")),
    ("wrn_40_2", "wrn_16_2"): _cifar("wrn40_2_wrn_16_2", 6.0, _ls_kd_log("wrn_40_2,wrn_16_2", 2, 9),
                                     _ls_dkd_log("wrn_40_2,wrn_16_2", 2, 12, 2.0)),
    ("wrn_40_2", "wrn_40_1"): _cifar("wrn40_2_wrn_40_1", 6.0, _ls_kd_log("wrn_40_2,wrn_40_1", 2, 9),
                                     _ls_dkd_log("wrn_40_2,wrn_40_1", 2, 12, 2.0)),
    ("vgg13", "vgg8"): _cifar("vgg13_vgg8", 6.0, _ls_kd_log("vgg13,vgg8", 3, 9),
                              _ls_dkd_log("vgg13,vgg8", 2, 15, 2.0)),
    ("resnet32x4", "shufflenetv1"): _cifar("res32x4_shuv1", 8.0, [_LS_KD, _LS_FLAGS],
                                           _ls_dkd_default("resnet32x4_ShuffleV1")),
    ("resnet32x4", "shufflenetv2"): _cifar("res32x4_shuv2", 8.0, _ls_kd_log("resnet32x4,ShuffleV2", 2, 9),
                                           _ls_dkd_log("resnet32x4,ShuffleV2", 2, 9, None, "resnet32x4_ShuffleV2")),
    ("wrn_40_2", "shufflenetv1"): _cifar("wrn40_2_shuv1", 8.0, [_LS_KD, _LS_FLAGS],
                                         _ls_dkd_default("wrn_40_2_ShuffleV1")),
    ("vgg13", "mobilenetv2"): _cifar("vgg13_mv2", 6.0, _ls_kd_log("vgg13,MobileNetV2", 3, 9),
                                     _ls_dkd_log("vgg13,MobileNetV2", 3, 9, 2.0)),
    ("resnet50", "mobilenetv2"): _cifar("res50_mv2", 8.0, _ls_kd_log("ResNet50,MobileNetV2", 3, 1),
                                        _ls_dkd_log("ResNet50,MobileNetV2", 2, 15, 2.0)),
}

# --- config/imagenet.yaml ---------------------------------------------------------------------------


def _imagenet(md_dir: str, ls_dir: str, nkd_file: str, dkd_beta: float, ls_ce: float) -> dict[str, list[Row]]:
    return {
        "kd": [Row({"T": 1.0, "ce": 0.5, "kd": 0.5}, MD, f"configs/imagenet/{md_dir}/kd.yaml")],
        "dkd": [Row({"T": 1.0, "ce": 1.0, "beta": dkd_beta, "warmup": 1.0}, MD, f"configs/imagenet/{md_dir}/dkd.yaml")],
        "dist": [Row({"T": 1.0, "ce": 1.0, "kd": 2.0}, SOTA, "configs/strategies/distill/resnet_dist.yaml",
                     "kd: 'dist' (tau 1), ori_loss_weight 1, kd_loss_weight 2; DIST_KD's README runs it")],
        "kd_ls": [_LS_KD, Row({"ce": ls_ce}, LS, f"configs/imagenet/{ls_dir}/kd.yaml", "KD.LOSS.CE_WEIGHT"),
                  Row({"T": 2.0, "kd": 9.0}, LS, "README.md", "ImageNet: --logit-stand --base-temp 2 --kd-weight 9")],
        "nkd": [Row({"T": 1.0, "gamma": 1.5}, NKD, f"configs/distillers/imagenet/{nkd_file}.py", "NKDLoss")],
        "kd_ctkd": [Row({"ce": 1.0, "kd": 1.0, "curriculum": 5.0}, CTKD, "scripts/run_imagenet_distill.sh",
                        "-r 1 -a 1, --decay_loops 5")],
        # RCKD: the authors' code has no ImageNet setting; their CIFAR one is assumed (docs/method.md).
        "rckd": [],
    }


IMAGENET_PAIRS = {
    ("tv_resnet34", "tv_resnet18"): _imagenet("r34_r18", "r34_r18", "res34_distill_res18_img", 0.5, 1.0),
    # LS's r50_mv2 "MobileNetV2" is MobileNet-V1 (its maintainer, LS issue #22).
    ("tv_resnet50", "mobilenetv1"): _imagenet("r50_mv1", "r50_mv2", "res50_distill_mv1_img", 2.0, 0.5),
}

# --- training protocols and constants ---------------------------------------------------------------
TRAIN = {
    "config.yaml": [
        Row({"epochs": 240, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0005,
             "milestones": [150, 180, 210], "lr_decay": 0.1}, MD, "configs/cifar100/dkd/res32x4_res8x4.yaml"),
        Row({"lr_by_arch": {"mobilenetv2": 0.01, "shufflenetv1": 0.01, "shufflenetv2": 0.01}}, MD,
            "configs/cifar100/dkd/res32x4_shuv1.yaml", "LR 0.01 in res32x4_shuv1/_shuv2, res50_mv2, vgg13_mv2"),
    ],
    "imagenet.yaml": [
        Row({"epochs": 100, "batch_size": 512, "lr": 0.2, "momentum": 0.9, "weight_decay": 0.0001,
             "milestones": [30, 60, 90], "lr_decay": 0.1}, MD, "configs/imagenet/r34_r18/kd.yaml"),
    ],
}
CONSTANTS = [
    (datasets, "CIFAR100_MEAN", (0.5071, 0.4867, 0.4408), Row({}, MD, "mdistiller/dataset/cifar100.py")),
    (datasets, "CIFAR100_STD", (0.2675, 0.2565, 0.2761), Row({}, MD, "mdistiller/dataset/cifar100.py")),
    (registry, "DIST_NORM_EPS", 1e-8, Row({}, SOTA, "lib/models/losses/dist_kd.py", "cosine_similarity eps")),
]


# --- how a run resolves its parameters ---------------------------------------------------------------


def _config(name: str) -> dict:
    """The config as the workflow reads it: merged over config.yaml, with the schema's defaults."""
    return workflow_config() if name == "config.yaml" else workflow_config(ROOT / "config" / name)


def _main_pairs(config: dict) -> list[dict]:
    return config["experiments"]["main"]["pairs"]


def _resolved(config: dict, pair: dict, method_name: str) -> tuple[str, dict[str, Any]]:
    spec = dict(config["methods"][method_name])
    loss = spec.pop("method", method_name)
    return loss, catalog.resolve(loss, {**spec, **pair.get("params", {}).get(method_name, {})})


def _expected(loss: str, rows: list[Row]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for row in CATALOG[loss] + rows:
        values.update(row.values)
    return values


def _all_rows() -> list[Row]:
    pairs = [*CIFAR_PAIRS.values(), *IMAGENET_PAIRS.values()]
    return ([row for rows in CATALOG.values() for row in rows] + [row for rows in TRAIN.values() for row in rows]
            + [row for *_, row in CONSTANTS] + [row for methods in pairs for rows in methods.values() for row in rows])


# --- the tests ---------------------------------------------------------------------------------------------


def test_every_row_names_a_file_at_a_full_commit():
    for row in _all_rows():
        assert row.repo in COMMITS and len(COMMITS[row.repo]) == 40 and row.path and not row.path.startswith("/")


def test_catalog_defaults_are_the_sources():
    for loss, rows in CATALOG.items():
        assert catalog.defaults(loss) == _expected(loss, []), loss


@pytest.mark.parametrize(("config_name", "table"), [("config.yaml", CIFAR_PAIRS), ("imagenet.yaml", IMAGENET_PAIRS)])
def test_every_pair_and_method_resolves_to_its_sources(config_name, table):
    config = _config(config_name)
    pairs = _main_pairs(config)
    configured = {(pair["teacher"], pair["student"]) for pair in pairs}
    assert configured == set(table), "a pair without rows, or rows without a pair"
    for pair in pairs:
        rows = table[(pair["teacher"], pair["student"])]
        for method_name in config["experiments"]["main"]["methods"]:
            loss, params = _resolved(config, pair, method_name)
            expected = _expected(loss, rows.get(method_name, []))
            assert params == expected, f"{config_name} {pair['teacher']} -> {pair['student']} {method_name}"


def test_fashion_pairs_take_mdistillers_dkd_betas():
    """config/fashion.yaml's per-pair DKD betas claim mdistiller's for the same pairs."""
    config = _config("fashion.yaml")
    for pair in _main_pairs(config):
        _, params = _resolved(config, pair, "dkd")
        (row,) = CIFAR_PAIRS[(pair["teacher"], pair["student"])]["dkd"]
        assert params["beta"] == row.values["beta"], pair


@pytest.mark.parametrize("config_name", list(TRAIN))
def test_training_protocol_is_the_sources(config_name):
    train = _config(config_name)["train"]
    for row in TRAIN[config_name]:
        for key, value in row.values.items():
            assert train[key] == value, f"{config_name} train.{key}"


def test_constants_are_the_sources():
    for module, name, value, _ in CONSTANTS:
        assert getattr(module, name) == value, name
