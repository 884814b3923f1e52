"""Per-method project packages (model, losses, task, configs glue)."""
