"""``python -m timm_trd <train.py arguments>``: the same as ``timm-trd-train``."""
from .cli.launcher import main

main()
