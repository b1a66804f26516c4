"""Making the small batches: the two data paths, cheap reduced loading, and the tools around them.

- ``loader`` (the device path: :class:`TRDLoader` downsamples collated batches on the device, ``resize``),
  ``sampler`` (the loader path: the plan as timm's ``ScheduledBatchSampler``), ``data_path`` (which path a run
  can take, and why not the other), ``streams`` (streamed datasets: the shard check, and the loader path whose
  workers pick each batch's size).
- ``decode``: reduced images decoded at a reduced JPEG scale, or read from the reduced copy.
- ``reduced_copy``: the half-resolution copy of a training folder (``timm-trd-reduced-copy``), its index and
  its content check.
- ``data_wait`` (are the loader workers keeping up), ``dataset_view`` (a dataset seen through other
  transforms), ``toy_data`` (the generated shapes-on-textures folders of the demo and the tests).

May import: :mod:`timm_trd.plan`, :mod:`timm_trd.errors`, timm and torch; never the plugin, the evaluation or the
command line.
"""
