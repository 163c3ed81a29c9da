"""The self-healing loop: signals, conditions, policies, actions, the ledger and escalation."""
