"""Training: recipes, the run plan, the trainer and its step, resume, distributed, schedules, EMA, the report."""
