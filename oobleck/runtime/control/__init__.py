"""The elastic control plane: who is in the job, how they talk, how they are started.

Modules (imported where used; importing this package imports nothing, so no torch):

- ``protocol``, ``server``, ``token``: authenticated, MAC'd JSON frames; the threaded server; the secret.
- ``hostfile``, ``launchers``: hostfiles and Slurm node lists; local, ssh and srun agent launchers.
- ``master``, ``agent``, ``job``, ``submission``: membership and liveness; one node's agent; running
  and submitting a job.
- ``membership``, ``link``: generations and rank maps; the worker's end of the agent link.
- ``checkpoint``, ``sever``: elastic checkpoints; cutting process-group connections on a failure.
"""

__all__: list[str] = []
