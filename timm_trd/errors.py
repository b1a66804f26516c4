"""The one error type every layer may raise: :class:`TRDConfigError`.

It sits at the bottom of the package (it imports nothing), so the plan, the data tools, the plugin, the
evaluation and the command line can all raise it. Its text is one line that names the fix; the command line
prints it and exits 2 before any training starts.
"""


class TRDConfigError(ValueError):
    """A TRD setting that cannot work; the message says what to change."""
