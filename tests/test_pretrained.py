"""timm's pretrained path (Hugging Face Hub, local files, classifier widths), the official constructor keywords,
and what importing fastvits does to the process."""

import json
import logging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import timm
import torch
from helpers import SMALL, small_model

import fastvits
from fastvits.models import LITv2

TINY_LITV2 = SMALL["litv2"]


def fine_tuned_checkpoint(path: Path, num_classes: int) -> tuple[Path, torch.nn.Module]:
    model = small_model("fastervit_0_224", num_classes=num_classes).eval()
    fastvits.save_safetensors(model.state_dict(), path)
    return path, model


# ------------------------------------------------------------------------------------------ classifiers
@pytest.mark.parametrize("entry", ["fastvits", "timm"])
def test_file_overlay_keeps_a_classifier_that_fits(tmp_path, entry):
    """timm alone drops any classifier whose width differs from the pretrained cfg's (1000), even a fitting one."""
    path, source = fine_tuned_checkpoint(tmp_path / "ft10.safetensors", 10)
    create = fastvits.create_model if entry == "fastvits" else timm.create_model
    model = create("fastervit_0_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=10,
                   **SMALL["fastervit"]).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), atol=0, rtol=0)


def test_a_reset_classifier_is_said_plainly(tmp_path, caplog):
    path, source = fine_tuned_checkpoint(tmp_path / "ft10.safetensors", 10)
    with caplog.at_level(logging.WARNING, logger="fastvits"):
        model = fastvits.create_model("fastervit_0_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                      num_classes=3, **SMALL["fastervit"])
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "classifier head.weight has shape (10, 128), the model's (3, 128)" in record.getMessage()
    assert "keeps its random initialisation" in record.getMessage() and "num_classes=10" in record.getMessage()
    torch.testing.assert_close(model.levels[0].blocks[0].conv1.weight, source.levels[0].blocks[0].conv1.weight)


# --------------------------------------------------------------------------------------- Hugging Face Hub
def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_weights_come_from_the_hugging_face_cache_offline(tmp_path):
    """FasterViT's cfg names the Hub repository and file; with HF_HUB_OFFLINE=1 huggingface_hub finds the file in
    its cache (the layout it writes: refs/main -> snapshots/REVISION/FILE)."""
    cfg = timm.models.get_pretrained_cfg("fastervit_0_224")
    assert (cfg.hf_hub_id, cfg.hf_hub_filename) == ("ahatamiz/FasterViT", "fastervit_0_224_1k.pth.tar")
    repo = tmp_path / "hub" / "models--ahatamiz--FasterViT"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    _, source = fine_tuned_checkpoint(tmp_path / "source.safetensors", 1000)
    torch.save({"state_dict": source.state_dict()}, snapshot / "fastervit_0_224_1k.pth.tar")
    torch.save(source.head.weight.detach(), tmp_path / "head.pt")
    result = run_python(
        f"""
        import torch, fastvits
        model = fastvits.create_model("fastervit_0_224", pretrained=True, **{SMALL['fastervit']!r})
        assert torch.equal(model.head.weight, torch.load({str(tmp_path / 'head.pt')!r})), "other weights"
        print("loaded")
        """,
        {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")},
    )
    assert result.returncode == 0 and "loaded" in result.stdout, result.stderr


def test_without_network_the_error_names_the_file_and_the_local_fix(tmp_path):
    result = run_python(
        """
        import fastvits
        try:
            fastvits.create_model("fastervit_0_224", pretrained=True)
        except fastvits.CheckpointError as e:
            print(e)
        """,
        {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty")},
    )
    message = result.stdout
    assert "fastervit_0_224: could not fetch or read the pretrained weights, fastervit_0_224_1k.pth.tar" in message
    assert "Hugging Face Hub repository ahatamiz/FasterViT" in message
    assert "pretrained_cfg_overlay=dict(file='PATH')" in message and "fastvits.load_checkpoint" in message


def test_url_weights_without_network(monkeypatch):
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(timm.models._builder, "download_cached_file", offline)
    expected = r"litv2_s: could not fetch .*releases/download/v1.0/litv2_s.pth"
    with pytest.raises(fastvits.CheckpointError, match=expected):
        fastvits.create_model("litv2_s", pretrained=True, **TINY_LITV2)


# ----------------------------------------------------------------------------------- official keywords
OFFICIAL_LITV2_S = dict(  # a config written for the official LITv2 class (classification/configs/litv2-small.yaml)
    img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96, depths=[2, 2, 6, 2],
    num_heads=[3, 6, 12, 24], mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
    drop_path_rate=0.2, ape=False, patch_norm=True, use_checkpoint=False, has_msa=[0, 0, 1, 1], alpha=0.9,
    local_ws=[0, 0, 2, 1],
)


def test_official_litv2_keywords_build_litv2_s():
    with torch.device("meta"):
        ours = LITv2(**OFFICIAL_LITV2_S)
        registered = fastvits.create_model("litv2_s")
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in registered.state_dict().items()
    }


def test_official_litv2_keywords_take_effect():
    kw = dict(OFFICIAL_LITV2_S, embed_dim=16, num_heads=[1, 2, 2, 4], depths=[1, 1, 2, 1])
    model = LITv2(**dict(kw, use_checkpoint=True, patch_norm=False, drop_rate=0.3, qk_scale=0.5))
    assert all(stage.grad_checkpointing for stage in model.layers)
    assert isinstance(model.patch_embed.norm, torch.nn.Identity)
    assert model.layers[0].blocks[0].mlp.drop.p == 0.3 and model.layers[2].blocks[0].attn.scale == 0.5
    alpha = LITv2(**dict(kw, alpha=0.5, has_msa=[0, 1, 1, 1], local_ws=[0, 4, 2, 1]))
    assert alpha.layers[1].blocks[0].attn.window_size == 4 and alpha.layers[2].blocks[0].attn.lofi_heads == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(has_msa=[0, 0, 1, 1], local_ws=[0, 2, 2, 1]), r"stage 1 has no attention \(has_msa\[1\]=0\) but a HiLo"),
        (dict(has_msa=[0, 0, 1, 1], local_ws=[0, 0, 0, 1]), r"stage 2 has attention \(has_msa\[2\]=1\) but local_ws"),
        (dict(has_msa=[0, 1, 1], local_ws=[0, 0, 2, 1]), "has_msa and local_ws need one entry per stage"),
    ],
)
def test_contradicting_litv2_keywords_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        LITv2(**dict(OFFICIAL_LITV2_S, **overrides))


@pytest.mark.parametrize(("keyword", "value"), [("attn_drop_rate", 0.1), ("ape", True)])
def test_litv2_keywords_without_effect_warn(keyword, value):
    with pytest.warns(UserWarning, match=f"{keyword}.* has no effect .as in the official code"):
        LITv2(**dict(OFFICIAL_LITV2_S, embed_dim=16, num_heads=[1, 2, 2, 4], **{keyword: value}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LITv2(**dict(OFFICIAL_LITV2_S, embed_dim=16, num_heads=[1, 2, 2, 4], img_size=384))  # no effect, documented


def test_official_fastervit_keywords_take_effect():
    kw = dict(SMALL["fastervit"], window_size=[7, 7, 7, 7], ct_size=2, mlp_ratio=4.0, resolution=224, in_chans=3,
              num_classes=1000, qkv_bias=True, qk_scale=None, drop_rate=0.1, attn_drop_rate=0.2, layer_scale=None,
              layer_scale_conv=None, layer_norm_last=True, hat=[False, False, True, False], do_propagation=False)
    model = fastvits.models.FasterViT(**kw)
    block = model.levels[2].blocks[0]
    assert isinstance(model.norm, timm.layers.LayerNorm2d)
    assert block.attn.attn_drop == 0.2 and block.attn.proj_drop.p == 0.1 and block.mlp.drop1.p == 0.1


# -------------------------------------------------------------------------------------------- the import
def test_import_changes_nothing_outside_fastvits():
    """No global module hooks, no torch settings changed, no FLOP formulas registered, no environment variables."""
    result = run_python(
        """
        import json, os, torch, torch.nn.modules.module as mm, torch.utils.flop_counter as fc
        def state():
            hooks = {k: len(v) for k, v in vars(mm).items() if k.startswith("_global") and isinstance(v, dict)}
            return dict(
                hooks=hooks, threads=torch.get_num_threads(), dtype=str(torch.get_default_dtype()),
                matmul=torch.get_float32_matmul_precision(), deterministic=torch.are_deterministic_algorithms_enabled(),
                grad=torch.is_grad_enabled(), mkldnn=torch.backends.mkldnn.enabled,
                cudnn=[torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark],
                tf32=[torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32],
                flops=len(fc.flop_registry), environ=sorted(os.environ),
            )
        before = state()
        import fastvits
        fastvits.create_model("fastervit_0_224", dim=16, in_dim=16, depths=(1, 1, 1, 1))
        print(json.dumps([before, state()]))
        """,
        {},
    )
    assert result.returncode == 0, result.stderr
    before, after = json.loads(result.stdout)
    assert before["hooks"] and after == before
