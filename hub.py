"""
Share a trained QShiftSegmenter on the Hugging Face Hub: its checkpoint, the image processor of training's
normalisation, and a model card that explains its settings.

    import hub, qshift
    model = qshift.QShiftSegmenter.from_pretrained("out/best")
    hub.push_to_hub(model, "you/qshift-synthetic", data="the synthetic benchmark", scores={"mIoU": 67.73})

Anyone then loads it with qshift (`QShiftSegmenter.from_pretrained("you/qshift-synthetic")`, every setting comes
back) or, as the image model frame by frame, with plain transformers.
"""
import json
import tempfile
from dataclasses import fields
from pathlib import Path

from huggingface_hub import HfApi

from qshift import FAMILIES, MEAN, STD, Settings


def save_image_processor(model, directory):
    """Write preprocessor_config.json: training's normalisation, for AutoImageProcessor.from_pretrained.

    Written as JSON, not through an image processor class: transformers 5 names its classes by backend (torchvision or
    PIL) and warns without torchvision; the file reads the same in either backend."""
    processor = {"image_processor_type": {"maskformer": "MaskFormerImageProcessor",
                                          "mask2former": "Mask2FormerImageProcessor"}[model.family],
                 "do_resize": False, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                 "image_mean": list(MEAN), "image_std": list(STD), "do_reduce_labels": False, "ignore_index": 255}
    (Path(directory) / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")


def model_card(model, repo_id, data=None, scores=None):
    """A short model card (a Hub repo's README.md) for a QShiftSegmenter: its settings and what they mean (from
    qshift.Settings' declarations), how to load it with qshift and with plain transformers, its classes, and the data
    set and scores where given."""
    hf_class = FAMILIES[model.family].hf_class.__name__
    rows = [f"| {f.name} | {json.dumps(getattr(model.settings, f.name))} | {f.metadata['meaning']} |"
            for f in fields(Settings)]
    trained = f"Trained on {data}." if data else "The data set it was trained on was not given."
    scored = "No scores were given."
    if scores:
        scored = "\n".join(["| " + " | ".join(scores) + " |", "|" + "---:|" * len(scores),
                            "| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v)
                                              for v in scores.values()) + " |"])
    classes = ", ".join(f"{i} {name}" for i, name in model.model.config.id2label.items())
    return f"""---
library_name: transformers
pipeline_tag: image-segmentation
tags: [video-semantic-segmentation, qshift, {model.family}]
---

# {repo_id}

A {hf_class} that segments videos with shifted and matched queries (Mizuno and Tamaki, "Shift and matching queries
for video semantic segmentation"): the image model runs on every frame, and a fraction of its decoded query channels
comes from the neighbouring frames. {trained}

{scored}

## Settings

They are config.json's `qshift` entry.

| setting | value | meaning |
|---|---|---|
{chr(10).join(rows)}

## Use

With qshift.py and streaming.py (they need torch, scipy and transformers):

```python
import qshift, streaming
model = qshift.QShiftSegmenter.from_pretrained("{repo_id}").eval()
pixel_values = qshift.frames_to_pixel_values(frames)  # uint8 (T, H, W, 3) -> (T, 3, H, W)
maps = list(streaming.predict_video(model, pixel_values))  # T class maps (H, W), any length
names = model.model.config.id2label
```

With transformers alone: the image model, frame by frame (the shift needs qshift.py):

```python
from transformers import AutoImageProcessor, {hf_class}
model = {hf_class}.from_pretrained("{repo_id}")
processor = AutoImageProcessor.from_pretrained("{repo_id}")
```

## Classes

{classes}
"""


def push_to_hub(model, repo_id, data=None, scores=None, private=None, token=None, commit_message="Upload model"):
    """Upload the checkpoint (save_pretrained's files), the image processor and a model card (README.md) to the Hub
    repo repo_id, created if it does not exist. data: the data set it was trained on; scores: {name: value}, for the
    card. Returns huggingface_hub's CommitInfo."""
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        save_image_processor(model, folder)
        (Path(folder) / "README.md").write_text(model_card(model, repo_id, data, scores))
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
