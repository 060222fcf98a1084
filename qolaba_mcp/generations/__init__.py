"""Generations: the job runner, the ledger around it, and delivery, behind one facade."""
