"""Fine-tuning jobs: data sources, the job runner, the CLI."""
