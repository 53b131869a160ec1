"""Slurm as a place a run can go: the job script, the Slurm commands, and what a job's state means for a run.

One module per job: ``jobs`` wraps Slurm's own commands (sbatch, squeue, scontrol, scancel, sinfo) and reads a
job's state (it imports nothing of glmtui's, so ``glmcore.runs`` can ask it about a run's job); ``script``
holds a run's Slurm settings (``slurm.json``), the workspace defaults and the job script glmtui writes;
``job`` is what the job script runs in the allocation (``python -m glmcore.slurm.job RUN``), ``node`` what
it starts on each node (the training process and the GPU sampler); ``gpus`` reads the GPU samples the
nodes append to the run folder. docs/runs.md ("Runs on Slurm") is the contract.
"""
