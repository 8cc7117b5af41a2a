"""The elastic control plane: who is in the job, how they talk, how they are started.

Modules (imported where used; importing this package imports nothing, so no torch):

- ``protocol``, ``server``, ``token``: authenticated, MAC'd JSON frames; the threaded server; the secret.
- ``hostfile``, ``launchers``: hostfiles and Slurm node lists; local, ssh and srun agent launchers.
- ``master``, ``master_config``, ``master_files``, ``outbox``, ``messages``: the master's shell, its
  settings and files, per-connection sends, field-checked messages.
- ``membership_machine``, ``membership_events``: the pure membership state machine and its inputs.
- ``agent``, ``devices``, ``worker_errors``: one node's agent; devices per node from its slots and the
  hardware entry; reading a worker's error file.
- ``job``, ``jobspec``, ``submission``, ``job_table``, ``progress``: running, submitting and listing
  jobs (a daemon runs many); the master's progress lines.
- ``preflight``, ``job_preflight``: input checks on the master before any worker starts.
- ``store``, ``store_state``, ``store_records``, ``generation_sync``: the authenticated rendezvous
  store, its validated records and the bounded barriers built on it.
- ``membership``, ``link``: generations and rank maps; the worker's end of the agent link.
- ``checkpoint``, ``sever``: elastic checkpoints; cutting a generation's connections on a failure.
"""

__all__: list[str] = []
