"""``python -m timm_trd.data.reduced_copy``: the same as ``timm-trd-reduced-copy``."""
from .make import main

main()
