"""
Small random MaskFormer and Mask2Former models that build offline in well under a second: for the tests, the
synthetic benchmark (train.py --model tiny) and README's example.
"""
import torch.nn as nn
from transformers import DetrConfig, Mask2FormerConfig, MaskFormerConfig, SwinConfig

from qshift import FAMILIES, QShiftSegmenter


def tiny_config(num_labels, hidden_size=64, num_queries=20, embed_dim=16, decoder_layers=2, mask_feature_size=32,
                image_size=64, id2label=None, family="maskformer"):
    """A small MaskFormer or Mask2Former config (Swin backbone).

    hidden_size is the query dimension C (the shift's channels); the paper's models have C = 256.
    """
    id2label = id2label or {i: f"class_{i}" for i in range(num_labels)}
    labels = dict(num_labels=num_labels, id2label=id2label, label2id={name: i for i, name in id2label.items()})
    backbone = SwinConfig(image_size=image_size, patch_size=4, embed_dim=embed_dim, depths=[1, 1, 1, 1],
                          num_heads=[1, 2, 2, 4], window_size=4, drop_path_rate=0.0,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    if family == "mask2former":  # HF builds decoder_layers - 1 masked-attention layers, reading levels 0, 1 (of 3)
        return Mask2FormerConfig(backbone_config=backbone, hidden_dim=hidden_size, num_queries=num_queries,
                                 decoder_layers=max(decoder_layers, 3), encoder_layers=1, num_attention_heads=4,
                                 dim_feedforward=2 * hidden_size, feature_size=mask_feature_size,
                                 mask_feature_size=mask_feature_size, encoder_feedforward_dim=2 * mask_feature_size,
                                 train_num_points=1024, **labels)
    if family != "maskformer":
        raise ValueError(f"family {family}: choose maskformer or mask2former")
    decoder = DetrConfig(d_model=hidden_size, decoder_layers=decoder_layers, decoder_attention_heads=4,
                         decoder_ffn_dim=2 * hidden_size, encoder_layers=1, encoder_attention_heads=4,
                         encoder_ffn_dim=2 * hidden_size, num_queries=num_queries, dropout=0.0)
    return MaskFormerConfig(backbone_config=backbone, decoder_config=decoder, fpn_feature_size=mask_feature_size,
                            mask_feature_size=mask_feature_size, **labels)


def build_model(config, **settings):
    """A randomly initialised QShiftSegmenter from an HF MaskFormerConfig or Mask2FormerConfig; settings: Settings'
    fields by name, the rest at their defaults.

    The learned query embeddings are drawn from N(0, 1), as in DETR: with HF's default std of 0.02 the queries of a
    model trained from scratch stay nearly identical and every pixel ends up with one class.
    """
    model = FAMILIES[config.model_type].hf_class(config)
    for name in ("queries_embedder", "queries_features"):  # Mask2Former learns both the queries and their positions
        if hasattr(model.model.transformer_module, name):
            nn.init.normal_(getattr(model.model.transformer_module, name).weight, std=1.0)
    return QShiftSegmenter(model, **settings)
