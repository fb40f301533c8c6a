# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Suite-wide settings: offline, and one CPU thread (tiny models gain nothing from threads, and the
default pool oversubscribes a shared 2-core machine)."""

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)
