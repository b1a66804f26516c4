"""torchrun's restarts (``--max-restarts``): every attempt's process group meets on a store of its own.

When a rank dies, torchrun's agent stops the others and starts all of them again (``TORCHELASTIC_RESTART_COUNT``
counts the attempts). The new processes meet through the agent's own TCPStore (``TORCHELASTIC_USE_AGENT_STORE``),
which still holds the keys the previous attempt's processes wrote: with torch 2.14 and ``--standalone``, gloo's
``connectFullMesh`` then reads a dead rank's address and every restarted rank fails with "Connection refused" (seen
with a plain ``init_process_group('gloo')`` script, no timm). :func:`separate_attempts` wraps the ``env://``
rendezvous that train.py's ``init_process_group`` uses, so each attempt's keys carry a prefix of their own
(``timm_trd/attempt_N/``), as torch's own rendezvous does for the stores it creates per attempt.
"""

import importlib
import os

_PREFIX = 'timm_trd/attempt_'


def separate_attempts() -> bool:
    """Under torchrun with the agent's store: the ``env://`` rendezvous gets a per-attempt key prefix (once per
    process); returns whether it did."""
    if os.environ.get('TORCHELASTIC_USE_AGENT_STORE') != 'True' or 'TORCHELASTIC_RESTART_COUNT' not in os.environ:
        return False
    rendezvous = importlib.import_module('torch.distributed.rendezvous')  # the module, not the function of that name
    handlers = getattr(rendezvous, '_rendezvous_handlers', None)
    env = handlers.get('env') if isinstance(handlers, dict) else None
    if env is None or getattr(env, 'timm_trd_attempts', False):
        return False
    from torch.distributed import PrefixStore

    def per_attempt(url, **kwargs):
        prefix = f'{_PREFIX}{os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")}'
        for store, rank, world_size in env(url, **kwargs):
            yield PrefixStore(prefix, store), rank, world_size

    per_attempt.timm_trd_attempts = True
    handlers['env'] = per_attempt
    return True
