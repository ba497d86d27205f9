"""The search: planning and rounds, the hypothesis strategies, real layers (catalogue) with
adversarial probes, parallel jobs and progress lines."""
