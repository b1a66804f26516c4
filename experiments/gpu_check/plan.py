"""What the GPU check runs and when: the two profiles (the GPU's, and the CPU dry run's), the phases of each
call with their time budgets, and the device calls that carry them."""

# Alternating two sizes must not raise the CUDA caching allocator's peak reservation above the full-size run's by
# more than this share. A reduced batch's working set is (80/160)^2 = 1/4 of a full one's, so keeping both side
# by side would be +25%; within 10% the allocator serves the small batches from the blocks the full ones freed.
MEMORY_BOUND = 0.10

_GPU_BUDGETS = {'setup': 25, 'acc-baseline': 120, 'acc-trd': 120, 'acc-sizes': 120, 'ddp': 45, 'ddp-syncbn': 40,
                'compile-default': 50, 'compile-reduce-overhead': 40, 'trainpy-baseline': 30, 'trainpy-loader': 30,
                'trainpy-device': 30, 'bench-compute': 80, 'bench-loader': 80, 'bench-compile': 120}
_DRY_BUDGETS = {'setup': 150, 'acc-baseline': 200, 'acc-trd': 200, 'acc-sizes': 200, 'ddp': 300, 'ddp-syncbn': 300,
                'compile-default': 200, 'compile-reduce-overhead': 200, 'trainpy-baseline': 150,
                'trainpy-loader': 150, 'trainpy-device': 150, 'bench-compute': 120, 'bench-loader': 120,
                'bench-compile': 120}

# Everything a run depends on, per profile. 'gpu' is the real check; 'dry' the same phases, tiny, on the CPU.
PROFILES = {
    'gpu': dict(
        device='cuda', amp_dtype=None, threads=None, compile_backend='inductor',
        acc=dict(model='resnet50', img=160, trd=80, prob=0.5, batch=256, epochs=30, lr=0.2, weight_decay=5e-5,
                 warmup=2, bn_recal=8, log_interval=50),
        ddp=dict(model='resnet50', img=224, trd=112, prob=0.5, batch=32, steps=4, epochs=2, world=2, bn_recal=2,
                 val=64, log_interval=2),
        compile=dict(model='resnet18', img=224, trd=112, prob=0.5, batch=64, steps=4, epochs=2, val=64,
                     log_interval=2),
        speed=dict(model='resnet50', img=224, trd=112, prob=0.5, batch=256, steps=16, epochs=2, val_per_class=1,
                   log_interval=8),
        bench=dict(compute=dict(batch=256, steps=40, rounds=3, warmup=1, images=512),
                   loader=dict(batch=256, steps=32, rounds=3, warmup=1),
                   compile=dict(batch=32, steps=4, rounds=2, images=64, workers=4, modes=['trd'])),
        budgets=_GPU_BUDGETS),
    'dry': dict(
        device='cpu', amp_dtype='bfloat16', threads=1, compile_backend='eager',  # CPU float16 autocast is ~20x slower
        acc=dict(model='resnet10t', img=32, trd=16, prob=0.5, batch=4, epochs=2, lr=0.05, weight_decay=5e-5,
                 warmup=1, bn_recal=1, log_interval=1),
        acc_data=dict(source_size=48, train=3, val=2, train_per_class=2, val_per_class=2, quality=90),
        ddp=dict(model='resnet10t', img=32, trd=16, prob=0.5, batch=2, steps=2, epochs=2, world=2, bn_recal=1,
                 val=4, log_interval=1),
        compile=dict(model='resnet10t', img=32, trd=16, prob=0.5, batch=4, steps=2, epochs=2, val=4, log_interval=1),
        speed=dict(model='resnet10t', img=32, trd=16, prob=0.5, batch=4, steps=2, epochs=2, val_per_class=1,
                   log_interval=1),
        bench=dict(compute=dict(batch=4, steps=2, rounds=1, warmup=1, images=8),
                   loader=dict(batch=4, steps=2, rounds=1, warmup=1),
                   compile=dict(batch=4, steps=2, rounds=2, images=8, workers=1, modes=['trd'])),
        budgets=_DRY_BUDGETS),
}
PHASES = tuple(_GPU_BUDGETS)
ACC_ARMS = ('acc-baseline', 'acc-trd', 'acc-sizes')
SPEED_PHASES = ('trainpy-baseline', 'trainpy-loader', 'trainpy-device')
CALL_PHASES = {
    '1': ('setup', *ACC_ARMS),
    '2': ('setup', 'ddp', 'ddp-syncbn', 'compile-default', 'compile-reduce-overhead', *SPEED_PHASES),
    'bench': ('setup', 'bench-compute', 'bench-loader', 'bench-compile'),
}
CALL_PHASES['all'] = PHASES
# What each device call carries (paths under the ignored .gpu_check/, made by --prepare), and its hard stop:
# the phases end by the call's deadline (the sum of its budgets); timeout_s only stops a hung command.
DEVICE_CALLS = {
    '1': dict(carry=['.gpu_check/wheels', '.gpu_check/train.py', '.gpu_check/imagenette'], timeout_s=420),
    '2': dict(carry=['.gpu_check/wheels', '.gpu_check/train.py', '.gpu_check/jpeg'], timeout_s=330),
}
NEEDS_TRAIN_SCRIPT = (*ACC_ARMS, 'ddp', 'ddp-syncbn', 'compile-default', 'compile-reduce-overhead', *SPEED_PHASES)
NEEDS_PHOTOS = ('ddp', 'ddp-syncbn', 'compile-default', 'compile-reduce-overhead', *SPEED_PHASES, 'bench-loader')


def device_call(call: str) -> dict:
    c = DEVICE_CALLS[call]
    return dict(command=f'bash experiments/gpu_check.sh --call {call}', carry=c['carry'], timeout_s=c['timeout_s'])


def run_call_text(call: str) -> str:
    c = device_call(call)
    return f"run(command={c['command']!r}, carry={c['carry']!r}, timeout_s={c['timeout_s']})"
