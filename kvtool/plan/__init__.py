"""Terraform-style plan/apply for kvtool stacks.

desired (load and validate what the user wants) → planner (read what the
cluster has) → diff (pure) → model (the Plan, with a versioned JSON form)
→ render (text / JSON) → apply (server-side apply, bounded concurrency).
"""
