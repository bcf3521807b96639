"""Fleet operations built on the engine: playbook runs, rollouts, status and drift, model diffs."""
