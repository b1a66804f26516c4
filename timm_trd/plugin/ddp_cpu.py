"""DDP on CPU processes (gloo): train.py passes ``device_ids=[device]`` whatever the device, and DDP rejects
``device_ids`` for a CPU module. :func:`make_ddp_cpu_safe` replaces train.py's task classes (main branch) or its
``DistributedDataParallel`` name (older train.py) with versions that drop CPU ``device_ids``; on accelerators
they pass everything through unchanged. Installed whether TRD is on or off: it only turns a crash into a run.
"""

import torch


def _cpu_only(device_ids) -> bool:
    return bool(device_ids) and all(torch.device(d).type == 'cpu' for d in device_ids)


def _cpu_safe_task_class(task_class):
    """A subclass of a timm task whose ``prepare_distributed`` drops CPU ``device_ids``."""

    class CpuSafeTask(task_class):
        def prepare_distributed(self, device_ids=None, **ddp_kwargs):
            if _cpu_only(device_ids):
                device_ids = None
            return super().prepare_distributed(device_ids=device_ids, **ddp_kwargs)

    CpuSafeTask.__name__ = task_class.__name__
    CpuSafeTask.__qualname__ = task_class.__qualname__
    CpuSafeTask.__doc__ = task_class.__doc__
    return CpuSafeTask


def _cpu_safe_ddp(ddp_class):
    """For train.py versions that build DDP themselves (``NativeDDP(model, device_ids=[device])``)."""

    def build(module, *args, device_ids=None, **kwargs):
        if _cpu_only(device_ids):
            device_ids = None
        return ddp_class(module, *args, device_ids=device_ids, **kwargs)

    return build


def make_ddp_cpu_safe(train_module) -> list:
    """Replace the module-level task classes / DDP name of train.py; returns the names replaced."""
    try:
        from timm.task import TrainingTask
    except ImportError:  # timm without tasks: train.py builds DDP itself
        TrainingTask = None
    replaced = []
    for name, value in list(vars(train_module).items()):
        if TrainingTask is not None and isinstance(value, type) and issubclass(value, TrainingTask):
            setattr(train_module, name, _cpu_safe_task_class(value))
        elif value is torch.nn.parallel.DistributedDataParallel:
            setattr(train_module, name, _cpu_safe_ddp(value))
        else:
            continue
        replaced.append(name)
    return replaced
