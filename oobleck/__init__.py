"""oobleck: resilient pipeline-parallel training with pipeline templates.

Glossary (these words mean one thing everywhere in the code):

node
    One failure domain: a machine (here: one agent process) with ``gpus_per_node`` devices.
    Nodes fail and join as a whole. Node ids are stable integers assigned by the master.
rank
    One torch.distributed process (one worker). A node with ``g`` slots runs ``g`` ranks.
    Ranks are renumbered each membership generation; node ids are not.
worker
    The process behind a rank: it executes the stages assigned to it.
layer
    One entry of a model's execution-ordered layer list (embedding, each block, final norm + head).
    Layers are indexed ``0 .. L-1``.
stage
    A contiguous layer range ``[first, last)`` placed on some GPUs of one node.
template
    A *plan* for a pipeline of ``n`` nodes: its stages and their placement. Computed once, before
    training, for every ``n`` in ``[n0, n_max]``.
pipeline
    A running *instance* of a template on concrete node ids, with a microbatch count.
step
    One optimizer update over the whole global batch.
microbatch
    ``microbatch_size`` samples; a pipeline runs ``b_i`` of them per step, ``sum(b_i) = B``.
generation
    The membership epoch: it increases on every failure or join; keys and process groups are
    namespaced by it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
