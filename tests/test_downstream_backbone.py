"""Backbone adapter: pyramid levels, FPN, frozen stages, frozen BatchNorm, classification-checkpoint init."""

import argparse
import csv
import json

import pytest
import timm
import torch
from helpers import fixture_checkpoint, load_fixture
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import fastvits
from fastvits.downstream import STRIDES, BackboneConfig, BackboneWithFPN, FeatureBackbone, build_backbone
from fastvits.downstream.backbone import _find_module, create_feature_model
from fastvits.downstream.bench import add_arguments, run

TINY_FASTERVIT = dict(dim=16, in_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=(7, 7, 7, 7))
TINY_LITV2 = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))
# One of each layout the adapter must handle: FeatureGetterNet (FasterViT, LITv2), FeatureListNet with a
# stride-2 level (ResNet), LayerNorm stages (ConvNeXt), channels-last outputs (Swin).
BACKBONES = {
    "fastervit": ("fastervit_0_any_res", TINY_FASTERVIT),
    "litv2": ("litv2_s", TINY_LITV2),
    "resnet": ("resnet10t", {}),
    "convnext": ("convnext_atto", {}),
    "swin": (
        "swin_tiny_patch4_window7_224",
        dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), img_size=(96, 128)),
    ),
}


def _cfg(key: str, **kw) -> BackboneConfig:
    name, kwargs = BACKBONES[key]
    return BackboneConfig(name, kwargs=kwargs, **kw)


@pytest.mark.parametrize("key", BACKBONES)
def test_pyramid_levels_and_fpn(key):
    backbone = build_backbone(_cfg(key)).eval()
    h, w = (96, 128) if key == "swin" else (100, 150)  # Swin's size is fixed at construction; others any size
    x = torch.randn(2, 3, h, w)
    feats = backbone(x)
    assert [f.shape[1] for f in feats] == backbone.channels
    for f, s in zip(feats, STRIDES):
        assert f.shape[0] == 2 and abs(f.shape[2] - h / s) <= 1 and abs(f.shape[3] - w / s) <= 1, (s, f.shape)
    fpn = BackboneWithFPN(backbone, 32).eval()
    out = fpn(x)
    assert list(out) == ["0", "1", "2", "3"] and all(o.shape[1] == 32 for o in out.values())


@pytest.mark.parametrize(
    ("key", "frozen"),
    [("fastervit", 0), ("fastervit", 2), ("litv2", 3), ("resnet", -1), ("resnet", 1), ("convnext", 4)],
)
def test_frozen_stages(key, frozen):
    backbone = build_backbone(_cfg(key, frozen_stages=frozen)).train()
    body = backbone.body
    params = list(body.parameters())
    reductions = body.feature_info.reduction()
    stages = [_find_module(body, body.feature_info.module_name()[reductions.index(s)]) for s in STRIDES]
    stage_ids = [{id(p) for p in stage.parameters()} for stage in stages]
    stem = params[: next(i for i, p in enumerate(params) if id(p) in stage_ids[0])]
    assert stem, "every backbone has a stem before its first stage"
    assert all(p.requires_grad == (frozen < 0) for p in stem)
    for k, stage in enumerate(stages):
        assert all(p.requires_grad == (frozen < 0 or k >= frozen) for p in stage.parameters()), k
    # Frozen parts stay in eval mode after .train(), so BN statistics and drop-path do not move.
    assert all(not m.training for m in stages[: max(frozen, 0)])
    assert any(p.requires_grad for p in body.parameters()) == (frozen < 4)


def test_frozen_batchnorm_ignores_batch_statistics():
    backbone = build_backbone(_cfg("resnet", frozen_bn=True))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    x = torch.randn(2, 3, 64, 64)
    train_out = backbone.train()(x)
    eval_out = backbone.eval()(x)
    assert len(train_out) == len(eval_out) == len(STRIDES)  # zip would stop at the shorter: compare lengths first
    assert all(torch.equal(a, b) for a, b in zip(train_out, eval_out))


@pytest.mark.parametrize(("key", "suffix"), [(k, ".safetensors") for k in BACKBONES] + [("resnet", ".pth")])
def test_classification_checkpoint_initialises_backbone(key, suffix, tmp_path):
    name, kwargs = BACKBONES[key]
    classifier = timm.create_model(name, num_classes=7, **kwargs).eval()
    path = tmp_path / f"cls{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": classifier.state_dict()}, path)  # a training checkpoint container
    else:
        fastvits.save_safetensors(classifier.state_dict(), path)
    backbone = build_backbone(BackboneConfig(name, checkpoint=str(path), kwargs=kwargs)).eval()
    x = torch.randn(1, 3, 96, 128)
    expected = classifier.forward_intermediates(x, intermediates_only=True)[-4:]
    features = backbone(x)
    assert len(features) == len(expected) == len(STRIDES)  # zip would stop at the shorter: compare lengths first
    assert all(torch.equal(a, b) for a, b in zip(features, expected))


def test_headless_checkpoint_initialises_backbone_without_warning(tmp_path, caplog):
    """A backbone has no classifier, so a checkpoint without one is complete for it."""
    name, kwargs = BACKBONES["fastervit"]
    body = {k: v for k, v in timm.create_model(name, **kwargs).state_dict().items() if not k.startswith("head.")}
    path = tmp_path / "body.safetensors"
    fastvits.save_safetensors(body, path)
    with caplog.at_level("WARNING"):
        build_backbone(BackboneConfig(name, checkpoint=str(path), kwargs=kwargs))
    assert "classifier" not in caplog.text


def test_official_fastervit_checkpoint_features_match_official_code(tmp_path):
    """Backbone features from an official-layout checkpoint equal the official implementation's.

    The square-window-grid fixture is used: on non-square grids fastvits departs from the official code on
    purpose (docs/fastervit.md).
    """
    meta, tensors = load_fixture("fastervit", "tiny_anyres_sqgrid")
    kwargs = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in meta["constructor"]["kwargs"].items()
        if k not in ("resolution", "num_classes")
    }
    path = fixture_checkpoint(tensors, tmp_path / "official.safetensors")
    backbone = build_backbone(BackboneConfig("faster_vit_0_any_res", checkpoint=str(path), kwargs=kwargs)).eval()
    with torch.no_grad():
        feats = backbone(tensors["inputs.x"])
    names = ["levels.0.pre_downsample", "levels.1.pre_downsample", "levels.2.pre_downsample", "levels.3.out"]
    for f, name in zip(feats, names):
        torch.testing.assert_close(f, tensors[f"features.{name}"], atol=1e-5, rtol=1e-5)


def test_wrong_checkpoint_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    fastvits.save_safetensors(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(fastvits.CheckpointError):
        create_feature_model("resnet10t", checkpoint=str(path))
    with pytest.raises(FileNotFoundError, match="not found"):
        create_feature_model("resnet10t", checkpoint=str(tmp_path / "missing.pth"))


def test_backbone_without_a_stride_is_refused():
    model = timm.create_model("resnet10t", features_only=True, out_indices=(1, 2, 3))
    with pytest.raises(ValueError, match="strides"):
        FeatureBackbone(model)


def test_bench_detection_mode_writes_table(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    # Any load counts as quiet here: one round is enough to check the plumbing.
    argv = "fastervit_0_any_res convnext_atto --img-size 64x96 --neck fpn --rounds 1 --warmup 1 --max-load 1000"
    kwargs = json.dumps({"fastervit_0_any_res": TINY_FASTERVIT})
    args = parser.parse_args([*argv.split(), "--device", "cpu", "--out", str(tmp_path), "--model-kwargs", kwargs])
    assert run(args) == 0
    rows = list(csv.DictReader((tmp_path / "detection_backbones.csv").open()))
    assert [r["model"] for r in rows] == ["fastervit_0_any_res", "convnext_atto"]
    assert all(float(r["infer_samples_per_sec"]) > 0 and r["infer_img_size"] == "64x96" for r in rows)
    assert (tmp_path / "detection_backbones.png").stat().st_size > 0
