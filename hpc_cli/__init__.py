"""The command lines: `hpc-offload` (admin and developer) and `kubectl hpc` (the user's).

They live apart from `webhook/` so the webhook package holds only what serves admission, and
a workstation install of the plugin needs none of the server's libraries.
"""
