"""Official-checkpoint loading: containers, key conversion, strictness and clear errors."""

import argparse

import pytest
import timm
import torch
from helpers import FIXTURES, small_model

import fastvits

OFFICIAL_KEYS = FIXTURES / "fastervit_0_224_keys.txt"


def official_fastervit0_state_dict() -> dict[str, torch.Tensor]:
    """A state dict with exactly the official faster_vit_0_224 keys, shapes and dtypes (random values)."""
    sd = {}
    for line in OFFICIAL_KEYS.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        shape = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        # positive values: some are BatchNorm variances
        sd[key] = torch.randint(0, 5, shape) if "int" in dtype else torch.rand(shape) * 0.1 + 0.01
    sd["levels.2.global_tokenizer.to_global_feature.pos.weight"] = sd["levels.2.global_tokenizer.pos_embed.weight"]
    sd["levels.2.global_tokenizer.to_global_feature.pos.bias"] = sd["levels.2.global_tokenizer.pos_embed.bias"]
    return sd


@pytest.fixture(scope="module")
def official_sd():
    return official_fastervit0_state_dict()


@pytest.fixture(scope="module")
def fv0():
    return fastvits.create_model("faster_vit_0_224")


def test_official_key_layout_converts_exactly(official_sd, fv0):
    """Every official key maps onto the model: nothing missing, nothing left over, all shapes equal."""
    sd = fastvits.checkpoint.convert_state_dict(official_sd, fv0)
    assert set(sd) == set(fv0.state_dict())
    dropped = set(official_sd) - {k.replace(".rel_pos.", ".pos_emb_funct.") for k in sd}
    assert all(k.endswith(("relative_bias", "relative_coords_table", "relative_position_index")) or
               ".to_global_feature.pos." in k for k in dropped)


@pytest.mark.parametrize("container", ["bare", "state_dict", "model", "ddp"])
def test_official_pth_tar_loads(tmp_path, official_sd, fv0, container):
    sd = {f"module.{k}": v for k, v in official_sd.items()} if container == "ddp" else official_sd
    obj = sd if container in ("bare", "ddp") else {container: sd, "epoch": 300}
    path = tmp_path / "fastervit_0_224_1k.pth.tar"
    torch.save(obj, path)
    fastvits.load_checkpoint(fv0, path)
    torch.testing.assert_close(fv0.head.weight, official_sd["head.weight"], atol=0, rtol=0)
    torch.testing.assert_close(fv0.levels[2].blocks[0].attn.rel_pos.cpb_mlp[0].weight,
                               official_sd["levels.2.blocks.0.attn.pos_emb_funct.cpb_mlp.0.weight"], atol=0, rtol=0)


def test_timm_pretrained_file_overlay(tmp_path, official_sd):
    path = tmp_path / "weights.pth.tar"
    torch.save({"state_dict": official_sd}, path)
    for overlay in (dict(file=str(path)), dict(file=str(path), custom_load=True)):
        model = timm.create_model("fastervit_0_224", pretrained=True, pretrained_cfg_overlay=overlay)
        torch.testing.assert_close(model.head.bias, official_sd["head.bias"], atol=0, rtol=0)


def test_new_head_for_fine_tuning(tmp_path, official_sd):
    path = tmp_path / "weights.pth.tar"
    torch.save({"state_dict": official_sd}, path)
    model = fastvits.create_model("fastervit_0_224", num_classes=10)
    fastvits.load_checkpoint(model, path)
    assert model.head.weight.shape == (10, 512)
    torch.testing.assert_close(model.norm.weight, official_sd["norm.weight"], atol=0, rtol=0)


def test_our_safetensors_roundtrip(tmp_path, fv0):
    path = tmp_path / "ours.safetensors"
    fastvits.save_safetensors(fv0.state_dict(), path)
    model = fastvits.create_model("fastervit_0_224")
    fastvits.load_checkpoint(model, path)
    for (k, a), b in zip(fv0.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_other_variant_is_refused_with_key_report(tmp_path, official_sd):
    path = tmp_path / "fastervit_0.pth.tar"
    torch.save({"state_dict": official_sd}, path)
    model = fastvits.create_model("fastervit_1_224")
    with pytest.raises(fastvits.CheckpointError) as e:
        fastvits.load_checkpoint(model, path)
    msg = str(e.value)
    assert "shape mismatch" in msg and "patch_embed.conv_down.0.weight" in msg
    assert "unexpected in checkpoint" in msg and "levels.0.blocks.1.conv1.weight" in msg
    assert "create the model" in msg


@pytest.mark.parametrize("suffix", [".pth.tar", ".safetensors"])
def test_truncated_file_is_refused(tmp_path, fv0, suffix):
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        fastvits.save_safetensors(fv0.state_dict(), path)
    else:
        torch.save({"state_dict": fv0.state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(fastvits.CheckpointError, match="truncated or corrupt"):
        fastvits.load_checkpoint(fastvits.create_model("fastervit_0_224"), path)


def test_pickled_arguments_need_explicit_trust(tmp_path, official_sd):
    """timm's checkpoint saver pickles argparse.Namespace: weights_only refuses it, and we say what to do."""
    path = tmp_path / "with_args.pth.tar"
    torch.save({"state_dict": official_sd, "args": argparse.Namespace(lr=0.005)}, path)
    with pytest.raises(fastvits.CheckpointError, match="weights_only=False"):
        fastvits.load_checkpoint(fastvits.create_model("fastervit_0_224"), path)


def test_missing_file(tmp_path):
    with pytest.raises(fastvits.CheckpointError, match="does not exist"):
        fastvits.load_checkpoint(fastvits.create_model("fastervit_0_224"), tmp_path / "nope.pth")


def test_cache_dropped_when_weights_change(tmp_path):
    """Cached position biases must follow new weights: eval, load other weights, eval again."""
    model = small_model("fastervit_3_224").eval()
    other = small_model("fastervit_3_224")
    x = torch.randn(1, 3, 128, 160)
    path = tmp_path / "other.safetensors"
    fastvits.save_safetensors(other.state_dict(), path)
    with torch.no_grad():
        before = model(x)
        after = fastvits.load_checkpoint(model, path)(x)
        fresh = fastvits.load_checkpoint(small_model("fastervit_3_224").eval(), path)(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["fastervit_0_224", "litv2_s"])
@pytest.mark.parametrize("in_chans", [1, 4])
def test_timm_in_chans_adapts_the_input_conv(tmp_path, name, in_chans, caplog):
    """`timm.create_model(..., pretrained=True, in_chans=N)`: the 3-channel input conv is adapted as timm does for its
    own weights (summed for one channel), everything else loads exactly; `load_checkpoint` adapts the same way."""
    source = small_model(name)
    path = tmp_path / "weights.safetensors"
    fastvits.save_safetensors(source.state_dict(), path)
    with caplog.at_level("WARNING"):
        model = small_model(name, pretrained=True, in_chans=in_chans, pretrained_cfg_overlay=dict(file=str(path)))
    assert caplog.text == ""  # timm adapts the conv after our filter: nothing to warn about
    conv = model.pretrained_cfg["first_conv"] + ".weight"
    adapted, original = model.state_dict()[conv], source.state_dict()[conv]
    assert adapted.shape[1] == in_chans
    if in_chans == 1:
        torch.testing.assert_close(adapted, original.sum(1, keepdim=True), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model.head.weight, source.head.weight, atol=0, rtol=0)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, in_chans, 64, 64)).isfinite().all()
    ours = fastvits.load_checkpoint(small_model(name, in_chans=in_chans), path)
    torch.testing.assert_close(ours.state_dict()[conv], adapted, atol=0, rtol=0)


def test_headless_checkpoint_warns(tmp_path, fv0, caplog):
    path = tmp_path / "backbone.safetensors"
    fastvits.save_safetensors({k: v for k, v in fv0.state_dict().items() if not k.startswith("head.")}, path)
    with caplog.at_level("WARNING", logger="fastvits.checkpoint"):
        fastvits.load_checkpoint(fastvits.create_model("fastervit_0_224"), path)
    assert "no classifier (head)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fastvits.checkpoint"):
        fastvits.load_checkpoint(fastvits.create_model("fastervit_0_224", num_classes=0), path)
    assert caplog.text == ""


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "an HTML page"),
        (bytes(range(200)), "is not a PyTorch checkpoint or safetensors file: its first bytes"),
        (b"", "it is empty"),
    ],
)
def test_not_a_checkpoint_is_named_as_such(tmp_path, content, match):
    """No advice to unpickle an unknown file with weights_only=False."""
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(fastvits.CheckpointError, match=match) as e:
        fastvits.load_checkpoint(fastvits.create_model("fastervit_0_224"), path)
    assert "weights_only=False" not in str(e.value)


def test_safetensors_under_another_suffix_loads(tmp_path, fv0):
    path = tmp_path / "weights.bin"
    fastvits.save_safetensors(fv0.state_dict(), path)
    model = fastvits.load_checkpoint(fastvits.create_model("fastervit_0_224"), path)
    torch.testing.assert_close(model.head.bias, fv0.head.bias, atol=0, rtol=0)


def test_non_strict_load_still_refuses_mis_shaped_tensors(tmp_path, official_sd):
    path = tmp_path / "fastervit_0.pth.tar"
    torch.save({"state_dict": official_sd}, path)
    with pytest.raises(fastvits.CheckpointError, match="shape mismatch"):
        fastvits.load_checkpoint(fastvits.create_model("fastervit_1_224"), path, strict=False)


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(fastvits.CheckpointError, match="is a folder; pass the weights file inside it"):
        fastvits.load_checkpoint(fastvits.create_model("fastervit_0_224"), tmp_path)


def test_fit_classifier_loads_a_fine_tuned_head(tmp_path):
    tuned = small_model("litv2_s", num_classes=7)
    path = tmp_path / "tuned.safetensors"
    fastvits.save_safetensors(tuned.state_dict(), path)
    model = fastvits.load_checkpoint(small_model("litv2_s"), path, fit_classifier=True)
    assert model.num_classes == 7
    torch.testing.assert_close(model.head.weight, tuned.head.weight, atol=0, rtol=0)
    kept = fastvits.load_checkpoint(small_model("litv2_s"), path)  # default: the model's own head (fine-tuning)
    assert kept.num_classes == 1000
