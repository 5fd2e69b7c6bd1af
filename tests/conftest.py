"""Shared test setup: offline, deterministic, small."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

torch.set_num_threads(min(2, torch.get_num_threads()))
