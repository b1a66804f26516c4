"""``torch.compile`` with TRD: one static graph per training size.

By default dynamo compiles the first shape it sees statically and, at the first change of shape, recompiles
with dynamic dimensions ("automatic dynamic shapes"). With TRD the shape changes on purpose between exactly two
sizes, so one static graph for each is both the fastest and a bounded number of compilations (2 for training,
plus validation's). :func:`keep_static_shapes` turns the automatic dynamic shapes off while TRD is on.
"""

import logging

_logger = logging.getLogger('timm_trd')


def keep_static_shapes() -> bool:
    """Make dynamo compile a static graph per input shape; returns whether the setting was changed."""
    try:
        import torch._dynamo.config as dynamo_config
    except ImportError:  # a torch without dynamo has nothing to compile
        return False
    if not getattr(dynamo_config, 'automatic_dynamic_shapes', False):
        return False
    dynamo_config.automatic_dynamic_shapes = False
    return True
