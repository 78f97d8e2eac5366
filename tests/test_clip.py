"""CLIP loading from a local checkpoint the test writes (a tiny open_clip model), and refusal paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detector.clip import ClipEmbedder, ClipUnavailable

TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> tuple[Path, Path]:
    """(config JSON, checkpoint) of a tiny open_clip model, written by the test."""
    import open_clip
    import torch
    folder = tmp_path_factory.mktemp("clip")
    cfg = folder / "tiny-clip.json"
    cfg.write_text(json.dumps(TINY))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip")
    ckpt = folder / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return cfg, ckpt


def test_loads_local_checkpoint_and_embeds(tiny_clip, icons):
    from PIL import Image
    cfg, ckpt = tiny_clip
    emb = ClipEmbedder.load(str(cfg), str(ckpt))
    assert emb.dim == 32 and emb.descriptor["model"] == "tiny-clip"
    assert len(emb.descriptor["checkpoint_sha256"]) == 16
    folder = icons("a", 3, (200, 100, 50))
    vecs = emb.embed([Image.open(p).convert("RGB") for p in sorted(folder.iterdir())])
    assert vecs.shape == (3, 32)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    again = ClipEmbedder.load(str(cfg), str(ckpt)).embed([Image.open(sorted(folder.iterdir())[0]).convert("RGB")])
    assert np.allclose(again[0], vecs[0], atol=1e-5)  # the checkpoint, not a fresh random init, was used


def test_missing_or_corrupt_weights_are_unavailable_with_reason(tiny_clip, tmp_path):
    cfg, _ = tiny_clip
    with pytest.raises(ClipUnavailable, match="not in the local cache and downloads are off"):
        ClipEmbedder.load("ViT-B-32", "laion2b_s34b_b79k")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ClipUnavailable, match="cannot load"):
        ClipEmbedder.load(str(cfg), str(bad))
    with pytest.raises(ClipUnavailable, match="unknown open_clip model"):
        ClipEmbedder.load("no-such-model", str(bad))
    with pytest.raises(ClipUnavailable, match="no checkpoint file at"):
        ClipEmbedder.load(str(cfg), str(tmp_path / "moved" / "w.pt"))


def test_models_fetch_reads_the_same_settings_as_scoring(monkeypatch, capsys):
    """`chimera models fetch` fetches what scoring will load: CHIMERA_CLIP_MODEL names the model (an
    unknown one is refused before any download is tried)."""
    from service.cli import main
    monkeypatch.setenv("CHIMERA_CLIP_MODEL", "no-such-model")
    assert main(["models", "fetch"]) == 2
    assert "unknown open_clip model" in capsys.readouterr().err
    monkeypatch.setenv("CHIMERA_CLIP_MODEL", "ViT-B-32")
    monkeypatch.setenv("CHIMERA_CLIP_WEIGHTS", "/nowhere/w.pt")  # a local checkpoint is never fetched
    assert main(["models", "fetch"]) == 2
    assert "no checkpoint file at /nowhere/w.pt" in capsys.readouterr().err


def test_cli_uses_clip_and_refuses_mixing(tiny_clip, icons, store_dir, capsys, tmp_path):
    import torch
    from service.cli import main
    cfg, ckpt = tiny_clip
    base = ["--store", str(store_dir), "--clip-model", str(cfg), "--clip-weights", str(ckpt)]
    folder = icons("alice", 4, (230, 180, 40))
    assert main([*base, "index", "add", "--artist", "alice", str(folder)]) == 0
    capsys.readouterr()
    assert main([*base, "score", "--json", str(sorted(folder.iterdir())[0])]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["embedders"]["clip"].startswith("open_clip tiny-clip checkpoint")
    assert result["verdict"]["label"] == "copy"
    # the same store without CLIP, or with other weights, must not take new works
    more = icons("alice", 2, (230, 180, 40), start=10)
    assert main(["--store", str(store_dir), "--no-clip", "index", "add", "--artist", "alice", str(more)]) == 2
    assert "cannot make them" in capsys.readouterr().err
    other = tmp_path / "other.pt"
    sd = torch.load(ckpt)
    sd["logit_scale"] = sd["logit_scale"] + 1
    torch.save(sd, other)
    assert main(["--store", str(store_dir), "--clip-model", str(cfg), "--clip-weights", str(other),
                 "index", "add", "--artist", "alice", str(more)]) == 2
    assert "embedder mismatch for 'clip'" in capsys.readouterr().err
    # scoring without CLIP still works on the other embedders, and says why CLIP is off
    assert main(["--store", str(store_dir), "--no-clip", "score", "--json", str(sorted(folder.iterdir())[0])]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["embedders"]["clip"].startswith("unavailable") and result["verdict"]["label"] == "copy"


def test_no_hub_checkpoint_is_known_without_importing_open_clip(tmp_path):
    """Where no OpenCLIP weights were ever fetched, CLIP is reported unavailable without importing
    open_clip and torch (seconds of every `chimera score`); once the hub cache holds any checkpoint,
    the full lookup decides, and another model's checkpoint still does not serve the default."""
    probe = ("import sys; from detector.embedders import Embedders; "
             "print(Embedders.load(quiet=True).status['clip']); print('open_clip' in sys.modules)")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "hf")}
    run = lambda: subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,  # noqa: E731
                                 check=True, cwd=Path(__file__).parents[1]).stdout.splitlines()
    status, imported = run()
    assert status.startswith("unavailable: weights 'laion2b_s34b_b79k' for ViT-B-32 are not in the local cache")
    assert "no OpenCLIP checkpoint of any model" in status and imported == "False"
    env["CHIMERA_CLIP_MODEL"] = str(tmp_path / "moved" / "config.json")  # a config file that is not there
    assert run()[0] == f"unavailable: model config {env['CHIMERA_CLIP_MODEL']} not found"
    del env["CHIMERA_CLIP_MODEL"]
    other = tmp_path / "hub" / "models--someone--other-clip" / "snapshots" / "0123abc"
    other.mkdir(parents=True)
    (other / "open_clip_model.safetensors").write_bytes(b"weights of another model")
    status, imported = run()
    assert status.startswith("unavailable: weights 'laion2b_s34b_b79k' for ViT-B-32 are not in the local cache")
    assert imported == "True"
