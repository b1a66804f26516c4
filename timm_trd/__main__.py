"""``python -m timm_trd <train.py arguments>``: the same as ``timm-trd-train``."""
from .launcher import main

main()
