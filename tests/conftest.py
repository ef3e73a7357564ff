"""Suite-wide settings: everything offline, nothing reaches the network."""

import os

for _var, _val in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                   ("HF_DATASETS_OFFLINE", "1"), ("DVC_NO_ANALYTICS", "1"),
                   ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_var, _val)
