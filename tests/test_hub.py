"""Sharing on the Hub (hub.py): a model laid out as the Hugging Face cache holds a download comes back whole, with
qshift and with plain transformers; push_to_hub uploads the checkpoint, the image processor and a model card."""
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

import hub
from qshift import FAMILIES, QShiftSegmenter, Settings, frames_to_pixel_values
from test_qshift import tiny_model, video


def hub_cache(cache, model, repo_id, revision="4b825dc642cb6eb9a060e54bf8d69288fbee4904"):
    """Lay save_pretrained's files out as the Hugging Face cache holds a downloaded repo: models--ORG--NAME/
    snapshots/REV/<files> and refs/main naming REV."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    model.save_pretrained(repo / "snapshots" / revision)
    hub.save_image_processor(model, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def test_a_model_shared_on_the_hub_comes_back_with_every_setting_its_class_names_and_image_processor(tmp_path):
    import huggingface_hub
    from transformers import AutoImageProcessor
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest: no network, the cache alone
    names = {0: "sky", 1: "road", 2: "car", 3: "person", 4: "tree"}
    models = {  # between them, every setting away from its default
        "org/tiny-maskformer": tiny_model(8, True, True, shift_at=("queries", "pixels"), match_by="masks", reach=2),
        "org/tiny-mask2former": tiny_model(4, False, False, family="mask2former", shift_at=("backbone", "queries"))}
    for f in fields(Settings):
        assert any(getattr(model.settings, f.name) != f.default for model in models.values()), f.name
    x = video(3)
    for repo_id, model in models.items():
        model.model.config.id2label, model.model.config.label2id = names, {n: i for i, n in names.items()}
        hub_cache(tmp_path, model, repo_id)
        loaded = QShiftSegmenter.from_pretrained(repo_id, cache_dir=tmp_path).eval()
        assert loaded.settings == model.settings and loaded.model.config.id2label == names
        with torch.no_grad():
            assert torch.equal(loaded(x[None]).masks_queries_logits, model(x[None]).masks_queries_logits)
            # plain transformers loads the same repo, every weight in place: the image model
            hf, info = FAMILIES[model.family].hf_class.from_pretrained(repo_id, cache_dir=tmp_path,
                                                                       output_loading_info=True)
            assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
            assert torch.equal(hf.eval()(x).masks_queries_logits, model.model(x).masks_queries_logits)
        frame = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
        processor = AutoImageProcessor.from_pretrained(repo_id, cache_dir=tmp_path)
        torch.testing.assert_close(processor(frame, return_tensors="pt")["pixel_values"],
                                   frames_to_pixel_values(frame[None]), atol=1e-5, rtol=0)
    with pytest.raises(OSError):
        QShiftSegmenter.from_pretrained("org/not-cached", cache_dir=tmp_path)


def test_push_to_hub_uploads_the_checkpoint_with_a_model_card(tmp_path, monkeypatch):
    uploaded, created = {}, []
    monkeypatch.setattr(hub.HfApi, "create_repo", lambda self, repo_id, **kwargs: created.append(repo_id))

    def upload_folder(self, repo_id, folder_path, commit_message):  # keeps what would go up: the folder is temporary
        uploaded.update({p.name: p.read_bytes() for p in Path(folder_path).iterdir()})
        return f"commit to {repo_id}"

    monkeypatch.setattr(hub.HfApi, "upload_folder", upload_folder)
    model = tiny_model(8, causal=True)
    model.model.config.id2label = {i: name for i, name in enumerate(["sky", "road", "car", "person", "tree"])}
    assert hub.push_to_hub(model, "org/tiny", data="synthetic", scores={"mIoU": 51.25}) == "commit to org/tiny"
    assert created == ["org/tiny"]
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(uploaded)
    card = uploaded["README.md"].decode()
    for f in fields(Settings):  # every setting, its value and its meaning
        assert f"| {f.name} | {json.dumps(getattr(model.settings, f.name))} | {f.metadata['meaning']} |" in card
    for text in ('QShiftSegmenter.from_pretrained("org/tiny")', 'MaskFormerForInstanceSegmentation.from_pretrained(',
                 'AutoImageProcessor.from_pretrained("org/tiny")', "Trained on synthetic", "| 51.25 |", "4 tree"):
        assert text in card, text
    folder = tmp_path / "uploaded"
    folder.mkdir()
    for name, content in uploaded.items():
        (folder / name).write_bytes(content)
    assert QShiftSegmenter.from_pretrained(folder).settings == model.settings
